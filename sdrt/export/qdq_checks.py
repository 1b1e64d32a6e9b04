"""What a Q/DQ graph must be before `sdrt export --qdq` writes it (sdrt.export.qdq).

Structure, as TensorRT's explicit quantization reads it: every input of a quantized Conv /
MatMul / Gemm comes through a DequantizeLinear; an activation's from a QuantizeLinear (the Q->DQ
pair), a weight's from an 8-bit initializer; zero points are 0 (TensorRT takes symmetric
quantization only) and scales are positive and finite. Layers kept in fp32 keep fp32 weights.

Arithmetic, from the scales: a Q->DQ pair rounds x to the grid of its scale s. In int8 a value
inside the range [-128.5 s, 127.5 s] moves by at most s / 2; in fp8 E4M3 (3 mantissa bits) a normal
value moves by at most 2^-4 of itself, a subnormal one by at most half the smallest step,
s * 2^-10 (E4M3's smallest subnormal is 2^-9). Values past the range saturate; their share is
counted. Every pair's DQ output is checked against its QuantizeLinear input on held-out samples,
and every weight against the fp32 weight it replaced.

The output: each quantized input l (activation or weight) moves by at most b_l elementwise,
a relative error of at most e_l = ||b_l|| / ||x_l|| (int8: (s / 2) / rms(x); fp8: about 2^-4).
Independent rounding errors through layers that do not amplify relative error (normalized
residual blocks) add in quadrature: the Q/DQ graph's ||y' - y|| / ||y|| against the fp32 graph
is checked against sqrt(sum e_l^2). That is an estimate with each error at its worst, not a
theorem (a layer with gain above 1 can exceed it); the pair checks above are exact.
"""

from __future__ import annotations

import numpy as np

from sdrt.export.staging import ExportError

QUANTIZE_OP, DEQUANTIZE_OP = "QuantizeLinear", "DequantizeLinear"
INT8_RANGE = (-128, 127)
#: E4M3FN: 3 mantissa bits (relative half-step 2^-4) and largest finite value 448 (OCP FP8 spec).
FP8_MANTISSA_BITS, FP8_MAX = 3, 448.0
FP8_SUBNORMAL_HALF_STEP = 2.0**-10
#: Slack for float32 rounding in the Q/DQ kernels' multiply and divide, relative to the value.
FLOAT_SLACK = 1e-6


class QdqGraphError(ExportError):
    """A Q/DQ graph is not what TensorRT's explicit quantization takes, or computes wrongly."""


def pair_bound(x: np.ndarray, scale: np.ndarray, fmt: str) -> tuple[np.ndarray, np.ndarray]:
    """(the largest move |DQ(Q(x)) - x| the scale allows for each value, which values are in range)."""
    magnitude = np.abs(x)
    if fmt == "int8":
        low, high = INT8_RANGE
        inside = (x >= (low - 0.5) * scale) & (x <= (high + 0.5) * scale)  # rounds to an end code at most s / 2 away
        bound = np.broadcast_to(scale / 2, x.shape)
    else:
        inside = magnitude <= FP8_MAX * scale * (1 + 2.0 ** -(FP8_MANTISSA_BITS + 1))
        bound = np.maximum(magnitude * 2.0 ** -(FP8_MANTISSA_BITS + 1), scale * FP8_SUBNORMAL_HALF_STEP)
    return bound + FLOAT_SLACK * magnitude, inside


def _producers(graph) -> dict:
    return {output: node for node in graph.node for output in node.output}


def check_structure(model, quantized: list[str], kept: list[str], fmt: str) -> dict[str, tuple[str, str]]:
    """Checks the Q/DQ structure (module docstring); returns {activation: (scale, zero point)}
    of every Q->DQ pair on a quantized node's input, keyed by the QuantizeLinear's input."""
    from onnx import numpy_helper

    graph = model.graph
    producers = _producers(graph)
    initializers = {t.name: t for t in graph.initializer}
    nodes = {node.name: node for node in graph.node}
    wanted = np.dtype("int8") if fmt == "int8" else None
    pairs = {}
    for name in quantized:
        node = nodes.get(name)
        if node is None:
            raise QdqGraphError(f"{name}: missing from the quantized graph")
        for index in (0, 1):
            dq = producers.get(node.input[index])
            if dq is None or dq.op_type != DEQUANTIZE_OP:
                raise QdqGraphError(f"{name}: input {index} ({node.input[index]}) does not come through Q/DQ")
            source = dq.input[0]
            if index == 0:
                q = producers.get(source)
                if q is None or q.op_type != QUANTIZE_OP:
                    raise QdqGraphError(f"{name}: its activation's DequantizeLinear is not fed by a QuantizeLinear")
                pairs[q.input[0]] = (q.input[1], q.input[2])
            elif source not in initializers:
                raise QdqGraphError(f"{name}: its weight's DequantizeLinear does not read a quantized initializer")
            else:
                codes = numpy_helper.to_array(initializers[source])
                if (wanted is not None and codes.dtype != wanted) or codes.dtype.itemsize != 1:
                    raise QdqGraphError(f"{name}: its weight is stored as {codes.dtype}, not {fmt}")
            scale = numpy_helper.to_array(initializers[dq.input[1]])
            if not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
                raise QdqGraphError(f"{name}: a Q/DQ scale is not positive and finite")
            if len(dq.input) > 2 and dq.input[2]:
                zero = numpy_helper.to_array(initializers[dq.input[2]]).astype(np.float32)
                if np.any(zero != 0):
                    raise QdqGraphError(f"{name}: a zero point is not 0 (TensorRT takes symmetric quantization)")
    for name in kept:
        node = nodes[name]
        weight = node.input[1]
        if weight in initializers and initializers[weight].data_type != 1:  # 1 = FLOAT
            raise QdqGraphError(f"{name}: a layer kept in fp32 has a weight that is not fp32")
    return pairs


def check_weights(model, original_weights: dict[str, np.ndarray], quantized: list[str], fmt: str) -> float:
    """Every quantized weight against the fp32 one (within pair_bound); returns the largest
    relative RMS error of a weight, ||W' - W|| / ||W||."""
    from onnx import numpy_helper

    graph = model.graph
    producers = _producers(graph)
    initializers = {t.name: t for t in graph.initializer}
    nodes = {node.name: node for node in graph.node}
    worst = 0.0
    for name in quantized:
        dq = producers[nodes[name].input[1]]
        codes = numpy_helper.to_array(initializers[dq.input[0]]).astype(np.float32)
        scale = numpy_helper.to_array(initializers[dq.input[1]]).astype(np.float32)
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and scale.size > 1:  # per channel, along `axis`
            shape = [1] * codes.ndim
            shape[axis] = scale.size
            scale = scale.reshape(shape)
        weight = original_weights[name]
        dequantized = codes * scale
        bound, inside = pair_bound(weight, np.broadcast_to(scale, weight.shape), fmt)
        if not np.all(inside) or np.any(np.abs(dequantized - weight) > bound):
            raise QdqGraphError(f"{name}: a quantized weight is further from the fp32 one than its scale allows")
        worst = max(worst, float(np.linalg.norm(dequantized - weight) / max(float(np.linalg.norm(weight)), 1e-30)))
    return worst


def _term(x: np.ndarray, bound: np.ndarray) -> float:
    """e_l: ||largest moves|| / ||x||."""
    return float(np.linalg.norm(bound) / max(float(np.linalg.norm(x)), 1e-30))


def weight_error_terms(original_weights: dict[str, np.ndarray], model, quantized: list[str], fmt: str) -> list[float]:
    """e_l of each quantized weight (the largest scale of a per-channel weight stands for all)."""
    from onnx import numpy_helper

    producers = _producers(model.graph)
    initializers = {t.name: t for t in model.graph.initializer}
    nodes = {node.name: node for node in model.graph.node}
    terms = []
    for name in quantized:
        dq = producers[nodes[name].input[1]]
        scale = numpy_helper.to_array(initializers[dq.input[1]]).astype(np.float32)
        weight = original_weights[name]
        terms.append(_term(weight, pair_bound(weight, np.float32(scale.max()), fmt)[0]))
    return terms


def check_pairs(
    activations: dict[str, np.ndarray], rounded: dict[str, np.ndarray], scales: dict[str, float], fmt: str
) -> tuple[list[float], float]:
    """Each pair's DQ output against its input (pair_bound); returns (e_l per pair, the largest
    share of one pair's values that saturated)."""
    terms, saturated = [], 0.0
    for name, x in activations.items():
        bound, inside = pair_bound(x, np.float32(scales[name]), fmt)
        if np.any(np.abs(rounded[name] - x)[inside] > bound[inside]):
            raise QdqGraphError(f"the Q/DQ pair on {name} moves a value further than its scale allows")
        saturated = max(saturated, float(1 - inside.mean()))
        terms.append(_term(x, bound))
    return terms, saturated
