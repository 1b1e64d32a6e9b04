"""One component of an export: traced to ONNX, converted and optimized for its target, validated
against its PyTorch module (quantized first with --weights), and its manifest entry. The
pipeline exporters (sdrt.export.exporter, dit_export, controlnet) run each engine through here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from sdrt.export import onnx_graph
from sdrt.export.components import ComponentExport, ModelGeometry
from sdrt.export.options import ExportOptions
from sdrt.export.quantize import quantize_and_validate
from sdrt.export.staging import WORK_DIR, ExportError
from sdrt.export.validation import Case, reference_cases, validate
from sdrt.runtime.files.integrity import record_sha256
from sdrt.runtime.manifest import ComponentSpec, TensorSpec, WeightQuantization

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
    traced = work / "traced.onnx"  # not plain's name below: a streamed trace's data must not be overwritten
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
        _drop(traced)
        traced = fused
    if options.fuses_operators(component):
        from sdrt.export.dit_cpu_fusions import fuse_file

        fuse_file(traced, traced)
    fp16 = precision == "fp16"
    if not options.optimize:
        files = onnx_graph.convert(traced, final, fp16)
        _drop(traced)
        onnx_graph.add_input_defaults(final, component.defaults)
        files, validation = _validated(component, final, files, cases, options, work)
        return final, files, dict(validation, graph="exported")
    plain = work / f"{precision}.onnx"
    onnx_graph.convert(traced, plain, fp16)
    if options.target == "cpu":
        _drop(traced)
        onnx_graph.optimize_for_cpu(plain, final)
        _drop(plain)
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


def _drop(graph: Path) -> None:
    """Deletes a work graph and its external data once the next step has read it: a full-size
    UNet or transformer is 10 GB or more a copy, and an export makes up to four of them."""
    graph.unlink(missing_ok=True)
    graph.with_name(graph.name + onnx_graph.EXTERNAL_DATA_SUFFIX).unlink(missing_ok=True)


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


def shares_weights(component: ComponentExport, later: list[ComponentExport]) -> bool:
    """Whether a later engine uses one of this one's weights (the VAE's decoder and encoder do)."""
    mine = {parameter.data_ptr() for parameter in component.module.parameters()}
    return any(parameter.data_ptr() in mine for other in later for parameter in other.module.parameters())
