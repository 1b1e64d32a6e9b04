"""Q/DQ graphs for TensorRT's int8 and fp8 engines (`sdrt export --qdq int8|fp8`).

The denoiser (the UNet or the diffusion transformer, >95% of a generation's time) is exported in
fp32 as usual, then quantized with ONNX Runtime's static quantizer (`quantize_static`, QDQ
format; opset 19 for fp8): QuantizeLinear -> DequantizeLinear pairs on the inputs of its convolutions
and weight MatMuls / Gemms, with scales calibrated on its own inputs, recorded while sdrt's
runtime denoises a few prompts (sdrt.export.qdq_calibration). TensorRT reads the pairs as
explicit quantization and runs those layers in int8 or fp8; the rest of the graph stays as
exported (TensorRT builds it in fp16).

What is quantized follows NVIDIA's diffusion quantization examples (TensorRT-Model-Optimizer's
examples/diffusers `filter_func`, as read): Conv and Linear layers, except the timestep and
conditioning embeddings and the first and last layers (KEPT_LAYERS), and not attention's two
activation x activation MatMuls (QK^T, PV). Symmetric scales (zero point 0: TensorRT's Q/DQ
takes no other); per output channel for int8 weights, per tensor for activations and for fp8
(ONNX Runtime's quantizer calibrates fp8 by the Distribution method only). Biases stay fp32.
The checks are in sdrt.export.qdq_checks; the text encoders and the VAE stay as exported.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np

from sdrt.export import onnx_graph
from sdrt.export import qdq_checks as checks
from sdrt.export.qdq_calibration import CALIBRATION_PROMPTS, CALIBRATION_STEPS, record_denoiser_inputs, recorded_reader
from sdrt.export.staging import WORK_DIR, ExportError, staged
from sdrt.runtime.files.integrity import record_sha256
from sdrt.runtime.manifest import MANIFEST_NAME, Manifest
from sdrt.runtime.qdq_formats import QDQ_FORMATS, QdqQuantization

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
#: Layers kept in fp32, by module name (NVIDIA's filter_func for UNets and for FLUX, joined).
KEPT_LAYERS = re.compile(
    r"time_emb_proj|time_embedding|conv_in|conv_out|conv_shortcut|add_embedding|pos_embed"
    r"|time_text_embed|context_embedder|norm_out|x_embedder|proj_out"
)
#: Q/DQ for fp8 needs opset 19 (QuantizeLinear's float8 outputs); int8 Q/DQ keeps the export's opset.
FP8_OPSET = 19
#: Held-out denoiser calls the Q/DQ graph is checked on: the first, middle and last step of the
#: held-out prompt's run (the noisiest inputs and the cleanest).
CHECKED_CALLS = 3
CALIBRATION_METHODS = {"int8": "MinMax", "fp8": "Distribution"}
# ONNX Runtime's calibrators hold every calibration call's intermediate tensors until the end.
# Its CalibMaxIntermediateOutputs option, documented as the same ranges in less memory, drops
# each full chunk without merging it in ONNX Runtime 1.32 (MinMaxCalibrater.collect_data calls
# clear_collected_data only), so it is not used: memory grows with the calls (docs/quantization.md).


def check_qdq(qdq: str | None, prompts: int, weights: str | None, precision: str, optimize: bool) -> None:
    """One clear line for any `--qdq` / `--qdq-prompts` this module cannot do."""
    if qdq is None:
        return
    if qdq not in QDQ_FORMATS:
        raise ExportError(f"qdq must be one of {', '.join(QDQ_FORMATS)}, got {qdq!r}")
    if not isinstance(prompts, int) or not 1 <= prompts < len(CALIBRATION_PROMPTS):
        raise ExportError(
            f"qdq prompts must be 1..{len(CALIBRATION_PROMPTS) - 1} (one more is held out), got {prompts!r}"
        )
    if weights is not None:
        raise ExportError(
            f"--qdq {qdq} and --weights {weights} do not combine: --weights packs MatMulNBits for ONNX Runtime's "
            "CPU kernels, --qdq makes Q/DQ graphs for TensorRT; choose one"
        )
    if precision != "fp32":
        raise ExportError(
            f"--qdq {qdq} quantizes an fp32 export (TensorRT runs the rest in fp16); drop --precision {precision}"
        )
    if optimize:
        raise ExportError(f"--qdq {qdq} quantizes the plain exported graph; drop --optimize and --fused-attention")


@contextmanager
def _quiet_root_logger():
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def chosen_nodes(model) -> tuple[list[str], list[str]]:
    """(nodes to quantize, Conv/MatMul/Gemm nodes kept in fp32): see the module docstring."""
    weights = {t.name for t in model.graph.initializer}
    quantized, kept = [], []
    for node in model.graph.node:
        if node.op_type in QUANTIZED_OPS:
            takes_weight = len(node.input) > 1 and node.input[1] in weights
            (quantized if takes_weight and not KEPT_LAYERS.search(node.name) else kept).append(node.name)
    return quantized, kept


def _input_types(model) -> dict[str, np.dtype]:
    from onnx import helper

    return {i.name: np.dtype(helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)) for i in model.graph.input}


def quantize_graph(source: Path, out: Path, fmt: str, calls: list[dict], work: Path) -> tuple[object, list, list]:
    """(the Q/DQ model, quantized node names, kept node names), calibrated on `calls`."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = onnx.load_model(str(source), load_external_data=True)
    quantized, kept = chosen_nodes(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), FP8_OPSET)
    if fmt == "fp8" and opset < FP8_OPSET:  # ONNX's own converter rewrites what changed (ReduceMean's axes, ...)
        from onnx import version_converter

        model = version_converter.convert_version(model, FP8_OPSET)
    upgraded = work / "source.onnx"
    external = len(onnx_graph.save(model, upgraded)) > 1
    types = _input_types(model)
    del model
    kind = QuantType.QInt8 if fmt == "int8" else QuantType.QFLOAT8E4M3FN
    with _quiet_root_logger():  # the quantizer's advice to pre-process (shape inference) goes to the root logger
        quantize_static(
            str(upgraded),
            str(out),
            recorded_reader(calls, types),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OPS),
            per_channel=fmt == "int8",
            activation_type=kind,
            weight_type=kind,
            nodes_to_quantize=quantized,
            calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[fmt]),
            use_external_data_format=external,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
        )
    return onnx.load_model(str(out), load_external_data=True), quantized, kept


def _session(path: Path):
    """A CPU session that runs the graph as written: with ONNX Runtime's graph optimizations off,
    each Q/DQ pair is its own rounding and each Conv / MatMul computes in fp32 on the rounded
    values, the arithmetic the graph specifies (and TensorRT's int8 / fp8 layers compute, up
    to their accumulation order). With them on, ONNX Runtime fuses the pairs into its integer
    kernels, whose AVX2 path (no VNNI) can saturate 16-bit partial sums: a different error."""
    import onnxruntime as ort

    from sdrt.runtime.engines.onnxruntime import ORT_ERRORS_ONLY

    options = ort.SessionOptions()
    options.log_severity_level = ORT_ERRORS_ONLY  # inputs with defaults are by design
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _with_outputs(source: Path, names: list[str], path: Path) -> Path:
    """The graph at `source` saved at `path` (the same folder) also outputting the float tensors
    `names`. Read without its external data, so a graph over protobuf's 2 GiB message limit is
    never copied: the probe names the same weights file."""
    import onnx
    from onnx import TensorProto, helper

    if source.parent != path.parent:
        raise ValueError(f"{path} must be beside {source}: it reads the same external data")
    model = onnx.load_model(str(source), load_external_data=False)
    model.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in names)
    onnx.save_model(model, str(path))
    return path


def check_graph(model, qdq_file: Path, fp32: Path, quantized, kept, fmt: str, calls: list[dict]) -> dict:
    """The checks of sdrt.export.qdq_checks on the held-out `calls`; returns the record's figures."""
    import onnx
    from onnx import numpy_helper

    pairs = checks.check_structure(model, quantized, kept, fmt)
    original = onnx.load_model(str(fp32), load_external_data=True)
    weights = {t.name: t for t in original.graph.initializer}
    by_name = {node.name: node for node in original.graph.node}
    fp32_weights = {name: numpy_helper.to_array(weights[by_name[name].input[1]]) for name in quantized}
    output_names = [o.name for o in original.graph.output]
    del original, weights
    worst_weight = checks.check_weights(model, fp32_weights, quantized, fmt)
    terms = checks.weight_error_terms(fp32_weights, model, quantized, fmt)
    initializers = {t.name: t for t in model.graph.initializer}
    scales = {x: float(numpy_helper.to_array(initializers[scale])) for x, (scale, _) in pairs.items()}
    consumers = {node.input[0]: node for node in model.graph.node if node.op_type == checks.DEQUANTIZE_OP}
    quantizers = {node.input[0]: node.output[0] for node in model.graph.node if node.op_type == checks.QUANTIZE_OP}
    rounded_names = {x: consumers[quantizers[x]].output[0] for x in pairs}
    probe_names = list(pairs) + list(rounded_names.values())
    probe = _session(_with_outputs(qdq_file, probe_names, qdq_file.with_name("probe.onnx")))
    reference = _session(fp32)
    names = [o.name for o in probe.get_outputs()]
    inputs = {i.name for i in probe.get_inputs()}
    saturated, squared_error, squared_norm, max_abs, activation_terms = 0.0, 0.0, 0.0, 0.0, []
    for feeds in calls:
        feeds = {name: value for name, value in feeds.items() if name in inputs}
        got = dict(zip(names, probe.run(names, feeds)))
        expected = reference.run(output_names, feeds)
        pair_terms, share = checks.check_pairs(
            {x: got[x] for x in pairs}, {x: got[rounded_names[x]] for x in pairs}, scales, fmt
        )
        activation_terms.append(pair_terms)
        saturated = max(saturated, share)
        for name, want in zip(output_names, expected):
            difference = got[name].astype(np.float64) - want
            squared_error += float(np.sum(np.square(difference)))
            squared_norm += float(np.sum(np.square(want.astype(np.float64))))
            max_abs = max(max_abs, float(np.abs(difference).max()))
    per_input = terms + list(np.max(np.array(activation_terms), axis=0))
    rms_rel = float(np.sqrt(squared_error / max(squared_norm, 1e-30)))
    return {
        "max_abs_error": max_abs,
        "rms_rel_error": rms_rel,
        "error_bound": float(np.sqrt(np.sum(np.square(per_input)))),
        "linear_sum": float(np.sum(per_input)),
        "max_weight_rel_error": worst_weight,
        "saturated_share": saturated,
    }


def quantize_export(
    source: Path,
    staging: Path,
    fmt: str,
    prompts: int,
    progress: Callable[[str], None] = print,
    steps: int = CALIBRATION_STEPS,
) -> Manifest:
    """The fp32 export in `source` written to `staging` with its denoiser as a Q/DQ graph (the
    other files copied); returns the new manifest. `source` is left as it was."""
    manifest = Manifest.load(source)
    component, runs = record_denoiser_inputs(source, list(CALIBRATION_PROMPTS[: prompts + 1]), steps, progress)
    spec = manifest.components[component]
    held_out = runs.pop()
    checked = [held_out[round(i * (len(held_out) - 1) / max(CHECKED_CALLS - 1, 1))] for i in range(CHECKED_CALLS)]
    own = {spec.file, *spec.data_files, spec.weights_map, MANIFEST_NAME} - {""}
    _copy_tree(source, staging, own)
    work = staging / WORK_DIR / "qdq"
    work.mkdir(parents=True)
    final = staging / spec.file
    final.parent.mkdir(parents=True, exist_ok=True)
    progress(f"{component}: quantizing to {fmt} Q/DQ on {sum(map(len, runs))} recorded calls")
    qdq_file = work / "qdq.onnx"
    model, quantized, kept = quantize_graph(source / spec.file, qdq_file, fmt, [c for r in runs for c in r], work)
    figures = check_graph(model, qdq_file, source / spec.file, quantized, kept, fmt, checked)
    files = onnx_graph.save(model, final)
    shutil.rmtree(work)
    passed = bool(figures["rms_rel_error"] <= figures["error_bound"])  # False for NaN too
    progress(
        f"{component}: {len(quantized)} layers in {fmt}, {len(kept)} kept; against fp32 rms rel error "
        f"{figures['rms_rel_error']:.2e} (bound {figures['error_bound']:.2e})"
    )
    if not passed:
        raise ExportError(
            f"{component}: the {fmt} Q/DQ graph is further from the fp32 graph than its scales allow "
            f"({figures['rms_rel_error']:.2e} > {figures['error_bound']:.2e})"
        )
    record = QdqQuantization(
        qdq=fmt,
        calibration_method=CALIBRATION_METHODS[fmt],
        calibration_prompts=prompts,
        calibration_samples=sum(map(len, runs)),
        nodes_quantized=len(quantized),
        nodes_kept=len(kept),
        max_abs_error=figures["max_abs_error"],
        rms_rel_error=figures["rms_rel_error"],
        error_bound=figures["error_bound"],
    )
    validation = {
        "max_abs_error": figures["max_abs_error"],
        "max_rel_error": figures["rms_rel_error"],
        "shapes": [list(c[spec.inputs[0].name].shape) for c in checked],
        "tolerance": figures["error_bound"],
        "passed": passed,
        "graph": "qdq",
        "provider": "CPUExecutionProvider",
        "against": "fp32 graph",
        **{k: figures[k] for k in ("linear_sum", "max_weight_rel_error", "saturated_share")},
    }
    new_spec = replace(
        spec,
        sha256=record_sha256(final),
        data_files={f.relative_to(staging).as_posix(): record_sha256(f) for f in files if f != final},
        validation=validation,
        weights_map="",  # LoRA is refused on a Q/DQ graph (sdrt.runtime.features.lora.weights_map)
        qdq=record,
    )
    manifest = replace(manifest, components={**manifest.components, component: new_spec})
    manifest.save(staging)
    return manifest


def _copy_tree(source: Path, staging: Path, skipped: set[str]) -> None:
    """Every file of `source` but `skipped` (relative paths) copied into `staging`. Not hard links:
    onnx refuses to read external weights from a file with more than one link (its guard against
    hard-link attacks), which would break both folders' external data."""
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source).as_posix()
        if path.is_dir() or relative in skipped:
            continue
        target = staging / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)


def export_with_qdq(
    export_fp32: Callable[[Path], object], out_dir: Path, options, overwrite: bool, progress: Callable[[str], None]
) -> Manifest:
    """`export_fp32(folder)` writes the fp32 export in the staging folder's scratch space; its
    denoiser is then quantized (quantize_export) and the whole moved into `out_dir`."""
    with staged(Path(out_dir), overwrite) as staging:
        fp32 = staging / WORK_DIR / "fp32"
        fp32.parent.mkdir(parents=True, exist_ok=True)
        export_fp32(fp32)
        return quantize_export(fp32, staging, options.qdq, options.qdq_prompts, progress)
