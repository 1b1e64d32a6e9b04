"""`sdrt export`: a Stable Diffusion pipeline to a validated ONNX folder with a manifest.

The folder has the layout of diffusers' `OnnxStableDiffusionPipeline` (text_encoder/,
unet/, vae_decoder/, vae_encoder/ each with model.onnx, plus tokenizer/, scheduler/ and
model_index.json) and sdrt's `manifest.json`. It is written beside the target and renamed into
place at the end, so a failed or interrupted export leaves no half-written folder. Each engine
is built and validated by sdrt.export.component_build.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from sdrt.errors import ModelFolderError
from sdrt.export.component_build import component_spec, export_component, shares_weights
from sdrt.export.components import ModelGeometry, component_exports, text_encoder_modules
from sdrt.export.model_files import family, sdxl_settings, versions, write_diffusers_files
from sdrt.export.options import ExportOptions
from sdrt.export.staging import ExportError, check_out_dir, staged
from sdrt.export.weights_map import lora_fingerprints, record_weights_map
from sdrt.runtime.manifest import FORMAT_VERSION, Manifest

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
            release = release_weights and not shares_weights(component, exports[index + 1 :])
            prints = lora_fingerprints(component, options)
            final, files, validation = export_component(
                component, staging, geometry, options, progress, release, streamed=True
            )
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
