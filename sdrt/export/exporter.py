"""`sdrt export`: a Stable Diffusion pipeline to a validated ONNX folder with a manifest.

The folder has the layout of diffusers' `OnnxStableDiffusionPipeline` (text_encoder/,
unet/, vae_decoder/, vae_encoder/ each with model.onnx, plus tokenizer/, scheduler/ and
model_index.json) and sdrt's `manifest.json`. It is written beside the target and renamed into
place at the end, so a failed or interrupted export leaves no half-written folder.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from sdrt.errors import ModelFolderError
from sdrt.export import onnx_graph
from sdrt.export.components import ComponentExport, ModelGeometry, component_exports, text_encoder_modules
from sdrt.export.model_files import family, sdxl_settings, versions, write_diffusers_files
from sdrt.export.options import ExportOptions
from sdrt.export.quantize import quantize_and_validate
from sdrt.export.staging import WORK_DIR, ExportError, check_out_dir, staged  # noqa: F401 (ExportError)
from sdrt.export.validation import Case, reference_cases, validate
from sdrt.export.weights_map import lora_fingerprints, record_weights_map
from sdrt.runtime.files.integrity import record_sha256
from sdrt.runtime.manifest import (
    FORMAT_VERSION,
    ComponentSpec,
    Manifest,
    TensorSpec,
    WeightQuantization,
)

CUDA_PROVIDER = "CUDAExecutionProvider"
ONNX_FILE = "model.onnx"


def _export_torch(component: ComponentExport, path: Path, case: Case) -> None:
    from sdrt.export.streamed_trace import trace_component

    trace_component(component, case.inputs, path)


def _graph_dtypes(path: Path, specs: list[TensorSpec]) -> list[TensorSpec]:
    """The specs with the dtypes the final graph really has (fp16 conversion changes them)."""
    import onnx

    graph = onnx.load_model(str(path), load_external_data=False).graph
    types = {
        v.name: onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name
        for v in list(graph.input) + list(graph.output)
    }
    return [replace(spec, dtype=types[spec.name]) for spec in specs]


def _build_component(
    component: ComponentExport,
    staging: Path,
    geometry: ModelGeometry,
    options: ExportOptions,
    release: bool = False,
    streamed: bool = False,
) -> tuple[Path, list[Path], dict]:
    """Export, convert and optimize one engine; returns its file, all its files, validation.
    With `release`, the module's weights are dropped once traced (nothing later needs them);
    `streamed` traces without holding a copy of them (sdrt.export.streamed_trace)."""
    precision = options.precision_of(component.name)
    work = staging / WORK_DIR / component.name
    work.mkdir(parents=True)
    out_dir = staging / component.name
    out_dir.mkdir()
    final = out_dir / ONNX_FILE
    traced = work / "fp32.onnx"
    cases = reference_cases(component, geometry)
    if streamed:
        from sdrt.export.streamed_trace import export_streamed

        export_streamed(component, traced, cases[0].inputs)
    else:
        _export_torch(component, traced, cases[0])
    if release:
        component.module.to("meta")  # frees the weights before the ONNX copy is fused, converted and run
    if options.fuses_attention(component.name):
        fused = work / "fused.onnx"
        onnx_graph.fuse_attention_for_cpu(traced, fused)
        traced = fused
    if options.fuses_operators(component):
        from sdrt.export.dit_cpu_fusions import fuse_file

        fuse_file(traced, traced)
    fp16 = precision == "fp16"
    if not options.optimize:
        files = onnx_graph.convert(traced, final, fp16)
        onnx_graph.add_input_defaults(final, component.defaults)
        files, validation = _validated(component, final, files, cases, options, work)
        return final, files, dict(validation, graph="exported")
    plain = work / f"{precision}.onnx"
    onnx_graph.convert(traced, plain, fp16)
    if options.target == "cpu":
        onnx_graph.optimize_for_cpu(plain, final)
        onnx_graph.add_input_defaults(final, component.defaults)
        files = [p for p in (final, final.with_name(final.name + onnx_graph.EXTERNAL_DATA_SUFFIX)) if p.exists()]
        files, validation = _validated(component, final, files, cases, options, work)
        return final, files, dict(validation, graph="optimized")
    # CUDA target: validate the same-precision graph here; the fused one runs only on CUDA.
    files = onnx_graph.save(onnx_graph.optimize_for_cuda(traced, component.name, precision == "fp16"), final)
    onnx_graph.add_input_defaults(final, component.defaults)
    if CUDA_PROVIDER in _available_providers():
        validation = dict(validate(component, final, cases, precision, CUDA_PROVIDER), graph="optimized")
    else:
        onnx_graph.add_input_defaults(plain, component.defaults)
        validation = dict(validate(component, plain, cases, precision), graph="exported")
    return final, files, validation


def _validated(
    component: ComponentExport, final: Path, files: list[Path], cases: list[Case], options: ExportOptions, work: Path
) -> tuple[list[Path], dict]:
    """The graph's files and validation; with --weights, quantized first (sdrt.export.quantize)."""
    if not options.quantizes(component.name):
        return files, validate(component, final, cases, options.precision_of(component.name))
    return quantize_and_validate(component, final, cases, options.weights, options.weight_block, work)


def export_component(
    component: ComponentExport,
    staging: Path,
    geometry: ModelGeometry,
    options: ExportOptions,
    progress: Callable[[str], None],
    release: bool = False,
    streamed: bool = False,
) -> tuple[Path, list[Path], dict]:
    """_build_component with its progress lines; an engine that does not reproduce its module
    is an ExportError."""
    started = time.perf_counter()
    precision = options.precision_of(component.name)
    progress(f"{component.name}: exporting ({precision}, {options.target}{', optimized' if options.optimize else ''})")
    final, files, validation = _build_component(component, staging, geometry, options, release, streamed)
    progress(
        f"{component.name}: max abs error {validation['max_abs_error']:.2e}, "
        f"max rel error {validation['max_rel_error']:.2e} ({time.perf_counter() - started:.1f}s)"
    )
    quantized = validation.get("quantization")
    if quantized:
        progress(
            f"{component.name}: {quantized['matmuls_quantized']} MatMuls in {quantized['weights']} (block "
            f"{quantized['block_size']}), {quantized['matmuls_kept']} kept; against PyTorch max rel error "
            f"{quantized['max_rel_error']:.2e} (estimate {quantized['estimated_output_rel_error']:.2e})"
        )
    if not validation["passed"]:
        raise ExportError(
            f"{component.name} ({precision}) does not reproduce the PyTorch model: relative "
            f"error {validation['max_rel_error']:.2e} > {validation['tolerance']:.0e}"
        )
    return final, files, validation


def component_spec(
    component: ComponentExport,
    staging: Path,
    final: Path,
    files: list[Path],
    validation: dict,
    options: ExportOptions,
    weights_map: str = "",
) -> ComponentSpec:
    """The manifest entry of an exported engine (paths relative to the folder, digests recorded)."""
    validation = dict(validation)
    quantization = validation.pop("quantization", None)
    return ComponentSpec(
        file=final.relative_to(staging).as_posix(),
        precision=options.precision_of(component.name),
        target=options.target,
        inputs=_graph_dtypes(final, component.inputs),
        outputs=_graph_dtypes(final, component.outputs),
        sha256=record_sha256(final),
        validation=validation,
        data_files={f.relative_to(staging).as_posix(): record_sha256(f) for f in files if f != final},
        weights_map=weights_map,
        quantization=None if quantization is None else WeightQuantization(**quantization),
        fused_attention=options.fuses_attention(component.name),
    )


def _available_providers() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


#: The diffusion-transformer families' exporters, tried in order (a Chroma or FLUX.2 pipeline is
#: FLUX-shaped too, so FLUX.1 comes last): (detector module, detector, exporter module, exporter).
TRANSFORMER_EXPORTERS = (
    ("sdrt.export.sd3", "is_sd3", "sdrt.export.sd3_export", "export_sd3_pipeline"),
    ("sdrt.export.flux2", "is_flux2", "sdrt.export.flux2_export", "export_flux2_pipeline"),
    ("sdrt.export.zimage", "is_zimage", "sdrt.export.zimage_export", "export_zimage_pipeline"),
    ("sdrt.export.chroma", "is_chroma", "sdrt.export.chroma_export", "export_chroma_pipeline"),
    ("sdrt.export.flux", "is_flux", "sdrt.export.flux_export", "export_flux_pipeline"),
)
#: The only exporter that takes --no-t5 (T5 is optional in SD3 alone).
SD3_EXPORTER = "export_sd3_pipeline"
#: The only exporter that takes --cache-graphs (sdrt.export.flux_cache).
FLUX_EXPORTER = "export_flux_pipeline"


def _transformer_exporter(pipeline):
    """The export function of a diffusion-transformer pipeline, or None for a UNet one."""
    import importlib

    for detector_module, detector, module, name in TRANSFORMER_EXPORTERS:
        if getattr(importlib.import_module(detector_module), detector)(pipeline):
            return getattr(importlib.import_module(module), name)
    return None


def export_pipeline(
    pipeline,
    out_dir: str | Path,
    *,
    source: dict,
    options: ExportOptions | None = None,
    overwrite: bool = False,
    progress: Callable[[str], None] = print,
    release_weights: bool = False,
) -> Manifest:
    """Export, validate and write the folder; returns its manifest. `release_weights` (for a
    pipeline nothing else uses) drops each module's weights once no later engine needs them,
    which keeps a full-size SDXL export within 24 GiB. A diffusion-transformer pipeline goes to its
    family's exporter (TRANSFORMER_EXPORTERS)."""
    options = ExportOptions() if options is None else options  # made now: its defaults are read when made
    exporter = _transformer_exporter(pipeline)
    if options.no_t5 and getattr(exporter, "__name__", None) != SD3_EXPORTER:
        raise ExportError("--no-t5 is for Stable Diffusion 3 models (T5 is optional there only)")
    if options.cache_graphs and getattr(exporter, "__name__", None) != FLUX_EXPORTER:
        raise ExportError("--cache-graphs is for FLUX.1 models (the other families' transformers are not split yet)")
    if exporter is not None:
        return exporter(
            pipeline,
            out_dir,
            source=source,
            options=options,
            overwrite=overwrite,
            progress=progress,
            release_weights=release_weights,
        )
    out_dir = Path(out_dir)
    geometry = ModelGeometry.of(pipeline, options.max_prompt_chunks)
    if (options.optimize and options.target == "cuda") or options.fused_attention:
        _use_classic_attention(pipeline)
    num_train_timesteps = pipeline.scheduler.config.num_train_timesteps
    sdxl = sdxl_settings(pipeline)
    token_rows = {name: module.config.vocab_size for name, module in text_encoder_modules(pipeline).items()}
    if sdxl is not None and sdxl.vae_force_upcast and options.vae_precision == "fp16":
        progress("vae: kept in fp32: this VAE overflows in fp16 (its config sets force_upcast)")
        options = replace(options, vae_precision="fp32")
    with staged(out_dir, overwrite) as staging:
        components = {}
        exports = component_exports(pipeline, geometry, num_train_timesteps)
        tiny = None
        if options.deepcache:
            from sdrt.export.deepcache import deepcache_exports

            exports = deepcache_exports(exports, pipeline)
        if options.tiny_vae is not None:
            from sdrt.export.tiny_vae import load_tiny_vae, tiny_vae_exports

            tiny_components, tiny = tiny_vae_exports(load_tiny_vae(options.tiny_vae), geometry)
            exports += tiny_components
        for index, component in enumerate(exports):
            release = release_weights and not _shares_weights(component, exports[index + 1 :])
            prints = lora_fingerprints(component, options)
            final, files, validation = export_component(component, staging, geometry, options, progress, release)
            weights_map = record_weights_map(final, prints, component.name, staging, files, progress)
            components[component.name] = component_spec(
                component, staging, final, files, validation, options, weights_map
            )
        write_diffusers_files(pipeline, staging, list(components))
        vae = pipeline.vae.config
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            family=family(pipeline),
            prediction_type=pipeline.scheduler.config.get("prediction_type", "epsilon"),
            vae_scaling_factor=float(vae.scaling_factor),
            vae_shift_factor=float(getattr(vae, "shift_factor", None) or 0.0),
            vae_scale_factor=geometry.vae_scale_factor,
            latent_channels=geometry.latent_channels,
            unet_in_channels=geometry.unet_in_channels,
            text_length=geometry.text_length,
            text_hidden_size=geometry.text_hidden_size,
            native_height=geometry.native_latent_size * geometry.vae_scale_factor,
            native_width=geometry.native_latent_size * geometry.vae_scale_factor,
            dims=geometry.dims(),
            components=components,
            source=source,
            versions=versions(),
            sdxl=sdxl,
            token_table_rows=token_rows,
            tiny_vae=tiny,
        )
        manifest.save(staging)
    return manifest


def _shares_weights(component: ComponentExport, later: list[ComponentExport]) -> bool:
    """Whether a later engine uses one of this one's weights (the VAE's decoder and encoder do)."""
    mine = {parameter.data_ptr() for parameter in component.module.parameters()}
    return any(parameter.data_ptr() in mine for other in later for parameter in other.module.parameters())


def _use_classic_attention(pipeline) -> None:
    """Attention as explicit matmul + softmax: the graph pattern ONNX Runtime's diffusion
    optimizer fuses into MultiHeadAttention (it does not match every SDPA export)."""
    from diffusers.models.attention_processor import AttnProcessor

    pipeline.unet.set_attn_processor(AttnProcessor())
    pipeline.vae.set_attn_processor(AttnProcessor())


def export_model(
    source: str,
    out_dir: str | Path,
    *,
    config: str | None = None,
    options: ExportOptions | None = None,
    overwrite: bool = False,
    progress: Callable[[str], None] = print,
):
    """Load `source` (folder, checkpoint or hub id) and export it to `out_dir`; returns its
    manifest. A ControlNet is exported alone (sdrt.export.controlnet)."""
    from sdrt.export.sources import NotAPipeline, load_pipeline

    options = ExportOptions() if options is None else options  # made now: its defaults are read when made
    out_dir = Path(out_dir)
    check_out_dir(out_dir, overwrite)
    from sdrt.export.controlnet import export_controlnet_model, is_controlnet_source, load_controlnet

    progress(f"loading {source}")
    if is_controlnet_source(source) and options.qdq is not None:
        raise ExportError("--qdq quantizes a pipeline's denoiser; export the ControlNet without it")
    if is_controlnet_source(source):
        return export_controlnet_model(
            load_controlnet(source, config),
            out_dir,
            source={"model": str(source)},
            options=options,
            overwrite=overwrite,
            progress=progress,
        )
    try:
        pipeline = load_pipeline(source, config)
    except NotAPipeline as error:  # a hub id: a ControlNet's repository has a config.json instead
        try:
            model = load_controlnet(source)
        except ModelFolderError:
            raise error from None
        return export_controlnet_model(
            model, out_dir, source={"model": str(source)}, options=options, overwrite=overwrite, progress=progress
        )
    if options.qdq is not None:  # the fp32 export first, then its denoiser quantized (sdrt.export.qdq)
        from sdrt.export.qdq import export_with_qdq

        def export_fp32(folder: Path) -> Manifest:
            fp32 = replace(options, qdq=None)
            return export_pipeline(pipeline, folder, source={"model": str(source)}, options=fp32, progress=progress)

        return export_with_qdq(export_fp32, out_dir, options, overwrite, progress)
    return export_pipeline(
        pipeline,
        out_dir,
        source={"model": str(source)},
        options=options,
        overwrite=overwrite,
        progress=progress,
        release_weights=True,
    )
