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

import json
import logging
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from sdrt.errors import SdrtError
from sdrt.runtime.manifest import COMPONENT_NAMES, VAE_COMPONENTS, WEIGHT_BLOCKS, WEIGHT_FORMATS
from sdrt.runtime.packed_weights import PackedLayout, unpack

#: Components whose MatMul weights are quantized: every engine an export may have but the VAEs'
#: (nearly all convolutions): the text encoders (CLIP, T5, Qwen3), UNets and transformers.
QUANTIZED_COMPONENTS = tuple(name for name in COMPONENT_NAMES if name not in VAE_COMPONENTS)
QUANTIZED_OP, PLAIN_OP, GEMM_OP = "MatMulNBits", "MatMul", "Gemm"
#: Slack on the per-weight bound |W' - W| <= |s| for float32 rounding in the dequantization.
FLOAT_SLACK = 1e-5
QUANTIZER_LOGGER = "onnxruntime.quantization"
#: Written in a component's work folder (staging/WORK_DIR/component): each packed weight's
#: layout and the sha256 of the fp32 weight it was packed from, which the LoRA weights map
#: (sdrt.export.weights_map) matches layers against, as it matches unpacked initializers.
PACKED_SOURCES_FILE = "packed_sources.json"


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


def packed_layout(node) -> PackedLayout:
    """Where and how one MatMulNBits node holds its weight."""
    attributes = {a.name: a.i for a in node.attribute}
    if len(node.input) > 3 and node.input[3]:
        raise QuantizationError(f"{node.name}: zero points are not expected in a symmetric quantization")
    return PackedLayout(
        node.input[1], node.input[2], attributes["K"], attributes["N"], attributes["bits"], attributes["block_size"]
    )


def gemms_as_matmuls(model) -> int:
    """Rewrites each Gemm of a weight (a Linear on a 2-D input: the transformers' timestep and
    modulation layers, up to a quarter of FLUX.1's weights) as MatMul + Add, in place, so that
    the quantizer, which takes MatMuls only, packs it too; returns how many. Only the plain
    form (alpha = beta = 1, A not transposed) is rewritten: it is the one torch exports."""
    from onnx import helper, numpy_helper

    weights = {t.name: t for t in model.graph.initializer}
    nodes, rewritten, transposed = [], 0, set()
    for node in model.graph.node:
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = attributes.get("alpha", 1.0) == 1.0 and attributes.get("beta", 1.0) == 1.0
        if node.op_type != GEMM_OP or node.input[1] not in weights or attributes.get("transA", 0) or not plain:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(weights[node.input[1]])
        name = f"{node.input[1]}_kn" if attributes.get("transB", 0) else node.input[1]
        if name not in weights:  # the weight as MatMul takes it, [in, out]
            weights[name] = numpy_helper.from_array(np.ascontiguousarray(weight.T), name)
            model.graph.initializer.append(weights[name])
            transposed.add(node.input[1])
        product = f"{node.output[0]}_matmul" if len(node.input) > 2 and node.input[2] else node.output[0]
        nodes.append(helper.make_node(PLAIN_OP, [node.input[0], name], [product], name=f"{node.name}_matmul"))
        if product != node.output[0]:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}_bias"))
        rewritten += 1
    used = {name for node in nodes for name in node.input}
    kept = [t for t in model.graph.initializer if t.name in used or t.name not in transposed]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return rewritten


def _count(model, op: str) -> int:
    return sum(node.op_type == op for node in model.graph.node)


def load_for_quantization(path: Path):
    """The fp32 graph at `path`, weights loaded, its Gemms of weights as MatMuls (what the
    quantizer packs)."""
    import onnx

    model = onnx.load_model(str(path), load_external_data=True)
    gemms_as_matmuls(model)
    return model


def quantize_file(path: Path, bits: int, block: int) -> tuple[object, dict[str, str]]:
    """(quantized model, {quantized node: the fp32 weight initializer it packs}). The quantizer
    rewrites the loaded graph in place: no second copy of the weights (a full-size UNet or
    transformer is several GB, and over protobuf's 2 GiB message limit for a serialized copy)."""
    model = load_for_quantization(path)
    weight_of = {node.output[0]: node.input[1] for node in model.graph.node if node.op_type == PLAIN_OP}
    quantized = quantize_model(model, bits, block)
    sources = {n.name: weight_of[n.output[0]] for n in quantized.graph.node if n.op_type == QUANTIZED_OP}
    return quantized, sources


def dequantize_into(quantized, reference, sources: dict[str, str]) -> tuple[dict, dict]:
    """Each weight of `reference` (the fp32 graph, load_for_quantization) that `quantized` packs
    replaced, in place and one at a time, by its dequantized value. Returns the weight-error
    figures (the largest |W' - W| / |s|, at most 1; the worst layer's ||W' - W|| / ||W||; their
    quadrature sum) and each packed weight's layout with the sha256 of the fp32 weight it was
    packed from (PACKED_SOURCES_FILE)."""
    import hashlib
    from dataclasses import asdict

    from onnx import numpy_helper

    packed = {t.name: t for t in quantized.graph.initializer}
    weights = {t.name: t for t in reference.graph.initializer}
    worst_step, relative, packed_sources = 0.0, [], {}
    for node in quantized.graph.node:
        if node.op_type != QUANTIZED_OP:
            continue
        layout = packed_layout(node)
        weight, step = unpack(
            layout, numpy_helper.to_array(packed[layout.codes]), numpy_helper.to_array(packed[layout.scales])
        )
        name = sources[node.name]
        original = np.ascontiguousarray(numpy_helper.to_array(weights[name]), dtype=np.float32)
        error = np.abs(weight - original)
        worst_step = max(worst_step, float((error / np.maximum(step, np.finfo(np.float32).tiny)).max()))
        relative.append(float(np.linalg.norm(error) / max(float(np.linalg.norm(original)), 1e-30)))
        packed_sources[layout.codes] = {
            "sha256": hashlib.sha256(original.tobytes()).hexdigest(),
            "shape": list(original.shape),
            "layout": asdict(layout),
        }
        weights[name].CopyFrom(numpy_helper.from_array(weight.astype(np.float32), name))
    figures = {
        "max_weight_error_steps": worst_step,
        "max_layer_rel_error": max(relative, default=0.0),
        "estimated_output_rel_error": float(np.sqrt(np.sum(np.square(relative)))),
    }
    if worst_step > 1 + FLOAT_SLACK:
        raise QuantizationError(f"a quantized weight is {worst_step:.3g} steps off, more than one step")
    return figures, packed_sources


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
    from sdrt.export import onnx_graph
    from sdrt.export.validation import Case, validate

    bits = WEIGHT_FORMATS[weights]
    quantized, sources = quantize_file(final, bits, block)
    original = load_for_quantization(final)  # the fp32 graph again, after the quantizer freed its own
    figures, packed_sources = dequantize_into(quantized, original, sources)
    (work / PACKED_SOURCES_FILE).write_text(json.dumps(packed_sources), encoding="utf-8")
    reference = work / "dequantized.onnx"
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
