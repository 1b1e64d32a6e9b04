"""Weight-only quantization of an exported graph (`sdrt export --weights int8|int4`).

ONNX Runtime's own quantizer (`MatMulNBitsQuantizer`) replaces each MatMul whose second input
is a weight by a `MatMulNBits` node: the weight stored in blocks of `block_size` values along
its input dimension, each block one scale and 8- or 4-bit codes, dequantized inside the kernel
(activations stay fp32). MatMuls of two activations (attention's QK^T and PV) stay as they are.

Convolutions are kept in fp32: ONNX Runtime's CPU kernels for quantized convolutions
(`ConvInteger`, `QLinearConv`, the QDQ-fused Conv) all quantize the *activations* to 8 bits as
well, calibrated on sample inputs; none keeps only the weight packed and computes in fp32 the
way MatMulNBits does. They are static quantization, a different accuracy trade, not done here.

The arithmetic (read back from the packed graph, not assumed): symmetric blocks have scale
s = m / -2^(bits-1), m the block's value of largest magnitude, and codes in
[-2^(bits-1), 2^(bits-1) - 1]; a weight is off by at most |s| / 2, or by up to |s| where the top
code clamps (a weight of m's magnitude and the other sign). Validation has two parts
(`quantize_and_validate`): the graph must compute exactly what its packed weights say (its
output against the fp32 graph holding the dequantized weights, within the fp32 export tolerance),
and every weight must lie within |s| of its exported value. The error against PyTorch is the
quantization's own change: it is measured and recorded, with the estimate the weight errors give
(independent rounding errors add in quadrature: sqrt of the sum over layers of each layer's
relative weight error ||W' - W|| / ||W||, squared).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from sdrt.errors import SdrtError
from sdrt.runtime.manifest import WEIGHT_BLOCKS, WEIGHT_FORMATS

#: Components whose MatMul weights are quantized: the text encoders and the UNets (the VAE is
#: nearly all convolutions).
QUANTIZED_COMPONENTS = ("text_encoder", "text_encoder_2", "unet", "unet_shallow")
QUANTIZED_OP, PLAIN_OP = "MatMulNBits", "MatMul"
#: Slack on the per-weight bound |W' - W| <= |s| for float32 rounding in the dequantization.
FLOAT_SLACK = 1e-5
QUANTIZER_LOGGER = "onnxruntime.quantization"


class QuantizationError(SdrtError):
    """Quantization was asked for in a way it cannot be done, or its graph is wrong."""


def check_weights(weights: str | None, block: int, precision: str, target: str) -> None:
    """One clear line for any `--weights` / `--weight-block` this module cannot do."""
    if weights is None:
        return
    if weights not in WEIGHT_FORMATS:
        raise QuantizationError(f"weights must be one of {', '.join(WEIGHT_FORMATS)}, got {weights!r}")
    if block not in WEIGHT_BLOCKS:
        raise QuantizationError(f"weight block must be one of {', '.join(map(str, WEIGHT_BLOCKS))}, got {block!r}")
    if target != "cpu":
        raise QuantizationError(
            f"--weights {weights} is for --target cpu: MatMulNBits is an ONNX Runtime operator TensorRT cannot build"
        )
    if precision != "fp32":
        raise QuantizationError(f"--weights {weights} quantizes an fp32 export; drop --precision {precision}")


@contextmanager
def _quiet_quantizer():
    """The quantizer logs one INFO line per MatMul."""
    logger = logging.getLogger(QUANTIZER_LOGGER)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def quantize_model(model, bits: int, block: int):
    """`model` (an onnx ModelProto, weights loaded) with its weight MatMuls as MatMulNBits."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    config = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True, bits=bits)
    with _quiet_quantizer():
        quantizer = MatMulNBitsQuantizer(model, algo_config=config)
        quantizer.process()
    return quantizer.model.model


def dequantized(node, initializers: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(weight [K, N] as the kernel sees it, |scale| per weight) of one MatMulNBits node, read
    from its packed codes: N rows of ceil(K / block) blocks, codes packed low bits first."""
    attributes = {a.name: a.i for a in node.attribute}
    k, n, bits, block = attributes["K"], attributes["N"], attributes["bits"], attributes["block_size"]
    packed = initializers[node.input[1]]
    blocks = packed.shape[1]
    per_byte = 8 // bits
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    codes = ((packed[..., None] >> shifts) & ((1 << bits) - 1)).reshape(n, blocks, block)
    scales = initializers[node.input[2]].reshape(n, blocks, 1).astype(np.float32)
    if len(node.input) > 3 and node.input[3]:
        raise QuantizationError(f"{node.name}: zero points are not expected in a symmetric quantization")
    zero_point = 1 << (bits - 1)
    weight = (codes.astype(np.float32) - zero_point) * scales
    step = np.broadcast_to(np.abs(scales), weight.shape)
    return weight.reshape(n, -1)[:, :k].T, step.reshape(n, -1)[:, :k].T


def _count(model, op: str) -> int:
    return sum(node.op_type == op for node in model.graph.node)


def quantize_file(path: Path, bits: int, block: int) -> tuple[object, object, dict[str, tuple[str, np.ndarray]]]:
    """(original model, quantized model, {quantized node: (its weight's initializer, value)})."""
    import onnx
    from onnx import numpy_helper

    original = onnx.load_model(str(path), load_external_data=True)
    weights = {t.name: t for t in original.graph.initializer}
    by_output = {node.output[0]: node for node in original.graph.node if node.op_type == PLAIN_OP}
    quantized = quantize_model(onnx.ModelProto.FromString(original.SerializeToString()), bits, block)
    exported = {}
    for node in quantized.graph.node:
        if node.op_type == QUANTIZED_OP:
            source = by_output[node.output[0]]
            exported[node.name] = (source.input[1], numpy_helper.to_array(weights[source.input[1]]))
    return original, quantized, exported


def weight_errors(quantized, exported: dict[str, tuple[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], dict]:
    """The dequantized weight by the initializer it replaces, and the weight-error figures: the largest
    |W' - W| / |s| (at most 1), the worst layer's ||W' - W|| / ||W|| and their quadrature sum."""
    from onnx import numpy_helper

    initializers = {t.name: numpy_helper.to_array(t) for t in quantized.graph.initializer}
    dequant, worst_step, relative = {}, 0.0, []
    for node in quantized.graph.node:
        if node.op_type != QUANTIZED_OP:
            continue
        weight, step = dequantized(node, initializers)
        name, original = exported[node.name]
        error = np.abs(weight - original)
        worst_step = max(worst_step, float((error / np.maximum(step, np.finfo(np.float32).tiny)).max()))
        relative.append(float(np.linalg.norm(error) / max(float(np.linalg.norm(original)), 1e-30)))
        dequant[name] = weight
    figures = {
        "max_weight_error_steps": worst_step,
        "max_layer_rel_error": max(relative, default=0.0),
        "estimated_output_rel_error": float(np.sqrt(np.sum(np.square(relative)))),
    }
    if worst_step > 1 + FLOAT_SLACK:
        raise QuantizationError(f"a quantized weight is {worst_step:.3g} steps off, more than one step")
    return dequant, figures


def _run(component, path: Path, cases) -> list[list[np.ndarray]]:
    import onnxruntime as ort

    from sdrt.runtime.engines.onnxruntime import ORT_ERRORS_ONLY

    options = ort.SessionOptions()
    options.log_severity_level = ORT_ERRORS_ONLY  # inputs with defaults are by design
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [spec.name for spec in component.outputs]
    return [
        session.run(names, {spec.name: array for spec, array in zip(component.inputs, case.inputs)}) for case in cases
    ]


def quantize_and_validate(
    component, final: Path, cases, weights: str, block: int, work: Path
) -> tuple[list[Path], dict]:
    """Quantize the fp32 graph at `final` in place; returns its files and its validation: the
    graph against the fp32 graph holding its dequantized weights (`passed`), with the error
    against PyTorch and the weight figures under `quantization` (see the module docstring)."""
    from onnx import numpy_helper

    from sdrt.export import onnx_graph
    from sdrt.export.validation import Case, validate

    bits = WEIGHT_FORMATS[weights]
    original, quantized, exported = quantize_file(final, bits, block)
    dequant, figures = weight_errors(quantized, exported)
    reference = work / "dequantized.onnx"
    for tensor in original.graph.initializer:
        if tensor.name in dequant:
            tensor.CopyFrom(numpy_helper.from_array(dequant[tensor.name], tensor.name))
    onnx_graph.save(original, reference)
    del original
    for leftover in final.parent.glob(final.name + "*"):
        leftover.unlink()
    files = onnx_graph.save(quantized, final)
    outputs = _run(component, reference, cases)
    exact = validate(component, final, [Case(c.inputs, out) for c, out in zip(cases, outputs)], "fp32")
    against_torch = validate(component, final, cases, "fp32")
    quantization = {
        "weights": weights,
        "bits": bits,
        "block_size": block,
        "symmetric": True,
        "matmuls_quantized": _count(quantized, QUANTIZED_OP),
        "matmuls_kept": _count(quantized, PLAIN_OP),
        "max_abs_error": against_torch["max_abs_error"],
        "max_rel_error": against_torch["max_rel_error"],
        **figures,
    }
    return files, dict(exact, quantization=quantization)
