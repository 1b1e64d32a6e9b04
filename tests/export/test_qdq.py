"""`sdrt export --qdq int8|fp8`: the Q/DQ graph's structure, its error against the fp32 graph
within the bound its scales give, the manifest, and the refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from sdrt.cli import main
from sdrt.export.exporter import ExportOptions
from sdrt.export.qdq import quantize_export
from sdrt.export.staging import ExportError
from sdrt.runtime.features.lora.weights_map import LoraError, WeightsMap
from sdrt.runtime.manifest import Manifest

#: A short calibration: one prompt of 4 steps (the held-out prompt's 4 calls are checked).
STEPS = 4
#: ONNX Runtime's int8 QuantizeLinear (ONNX spec): saturate(round_half_even(x / s) + zero point).
INT8_LOW, INT8_HIGH = -128, 127


def _qdq_export(exported_tiny, tmp_path_factory, fmt: str) -> Path:
    out = tmp_path_factory.mktemp(f"qdq-{fmt}") / "model"
    out.mkdir()
    quantize_export(exported_tiny(), out, fmt, prompts=1, progress=lambda line: None, steps=STEPS)
    return out


@pytest.fixture(scope="module")
def int8_export(exported_tiny, tmp_path_factory) -> Path:
    return _qdq_export(exported_tiny, tmp_path_factory, "int8")


def _graph(folder: Path) -> onnx.GraphProto:
    return onnx.load_model(str(folder / Manifest.load(folder).components["unet"].file)).graph


def _weight_matmuls_and_convs(graph) -> tuple[list, list]:
    """(Conv/MatMul/Gemm nodes whose weight is an initializer, MatMuls of two activations) of a
    graph, read independently of sdrt.export.qdq."""
    initializers = {t.name for t in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    weighted, activations = [], []
    for node in graph.node:
        if node.op_type not in ("Conv", "MatMul", "Gemm"):
            continue
        source = producers.get(node.input[1])
        if node.input[1] in initializers or (source is not None and source.op_type == "DequantizeLinear"):
            weighted.append(node)
        else:
            activations.append(node)
    return weighted, activations


def test_every_quantized_layer_reads_its_inputs_through_q_dq(int8_export, exported_tiny):
    graph = _graph(int8_export)
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    weighted, activations = _weight_matmuls_and_convs(graph)
    quantized = [n for n in weighted if producers.get(n.input[1]) is not None]
    quantized = [n for n in quantized if producers[n.input[1]].op_type == "DequantizeLinear"]
    for node in quantized:
        activation = producers[node.input[0]]
        assert activation.op_type == "DequantizeLinear" and producers[activation.input[0]].op_type == "QuantizeLinear"
        weight = producers[node.input[1]]
        assert initializers[weight.input[0]].dtype == np.int8
        for dq in (activation, weight):
            assert np.all(initializers[dq.input[1]] > 0) and not np.any(initializers[dq.input[2]])  # symmetric
    assert not any("DequantizeLinear" == producers[n.input[0]].op_type for n in activations if n.input[0] in producers)
    kept = [n for n in weighted if n not in quantized]
    assert all(
        n.name.split("/")[-2]
        in ("conv_in", "conv_out", "conv_shortcut", "time_emb_proj", "proj_out", "linear_1", "linear_2")
        for n in kept
    )
    record = Manifest.load(int8_export).components["unet"].qdq
    assert record.qdq == "int8" and record.nodes_quantized == len(quantized) > 0
    assert record.nodes_kept == len(kept) + len(activations)
    assert record.calibration_samples == STEPS  # one prompt's denoiser calls
    fp32 = Manifest.load(exported_tiny())
    for name in ("text_encoder", "vae_decoder"):  # the rest is the fp32 export's, untouched
        assert Manifest.load(int8_export).components[name].sha256 == fp32.components[name].sha256


def test_q_dq_pairs_round_as_the_onnx_spec_says(int8_export):
    """One activation pair through ONNX Runtime against a NumPy rewrite of the spec's formula."""
    import onnxruntime as ort

    graph = _graph(int8_export)
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    q = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in initializers)
    scale = initializers[q.input[1]]
    x = (np.random.default_rng(0).standard_normal(4096).astype(np.float32) * 100 * scale).astype(np.float32)
    model = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])],
            "pair",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [x.size])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.INT8, [x.size])],
            [numpy_helper.from_array(scale, "s"), numpy_helper.from_array(initializers[q.input[2]], "z")],
        ),
        opset_imports=[onnx.helper.make_opsetid("", 17)],
    )
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    expected = np.clip(np.rint(x / scale), INT8_LOW, INT8_HIGH).astype(np.int8)
    assert np.array_equal(got, expected)


def test_the_recorded_error_is_the_graphs_on_the_held_out_prompt(int8_export, exported_tiny):
    """The held-out prompt's denoiser calls, recorded again through the runtime: the Q/DQ graph's
    error against the fp32 graph on the checked calls is the manifest's (above zero: it
    quantized) and within the bound derived from the scales. (On other prompts the bound is an
    estimate, not a guarantee: docs/quantization.md.)"""
    import onnxruntime as ort

    from sdrt.export.qdq import CHECKED_CALLS
    from sdrt.export.qdq_calibration import CALIBRATION_PROMPTS, CALIBRATION_SEED, record_denoiser_inputs

    spec = Manifest.load(int8_export).components["unet"]
    assert spec.validation["passed"] and 0 < spec.qdq.rms_rel_error <= spec.qdq.error_bound < 1
    prompts = list(CALIBRATION_PROMPTS[:2])  # the calibration prompt, then the held-out one (seed + 1)
    _, runs = record_denoiser_inputs(exported_tiny(), prompts, STEPS, lambda line: None)
    held_out = runs[1]
    checked = [held_out[0], held_out[len(held_out) // 2], held_out[-1]][:CHECKED_CALLS]
    assert CALIBRATION_SEED == 0 and STEPS == 4  # which calls those are: steps 0, 2 (round(1.5) = 2), 3
    fp32 = ort.InferenceSession(str(exported_tiny() / "unet" / "model.onnx"), providers=["CPUExecutionProvider"])
    as_written = ort.SessionOptions()
    as_written.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # no fused integer kernels
    qdq = ort.InferenceSession(str(int8_export / spec.file), as_written, providers=["CPUExecutionProvider"])
    outputs = [(fp32.run(["out_sample"], feeds)[0], qdq.run(["out_sample"], feeds)[0]) for feeds in checked]
    error = np.sqrt(sum(np.sum((got - want) ** 2) for want, got in outputs) / sum(np.sum(w**2) for w, _ in outputs))
    assert error == pytest.approx(spec.qdq.rms_rel_error, rel=1e-4)


def test_lora_on_a_qdq_export_is_refused_by_name(int8_export):
    spec = Manifest.load(int8_export).components["unet"]
    assert spec.weights_map == ""
    with pytest.raises(LoraError, match="int8 Q/DQ graph"):
        WeightsMap.load(int8_export, "unet", spec)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"qdq": "int8", "weights": "int8"}, "--qdq int8 and --weights int8 do not combine"),
        ({"qdq": "fp8", "precision": "fp16"}, "drop --precision fp16"),
        ({"qdq": "int4"}, "qdq must be one of int8, fp8"),
        ({"qdq": "int8", "qdq_prompts": 0}, "qdq prompts must be"),
        ({"qdq": "int8", "optimize": True}, "drop --optimize"),
    ],
)
def test_what_qdq_cannot_do_is_one_line(options, words):
    with pytest.raises(ExportError, match=words):
        ExportOptions(**options)


def test_the_cli_refuses_qdq_with_weights_in_one_line(tmp_path):
    result = CliRunner().invoke(
        main, ["export", "x", "--out", str(tmp_path / "o"), "--qdq", "int8", "--weights", "int8"]
    )
    assert result.exit_code != 0 and "do not combine" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_fp8_graph_holds_float8_weights_within_its_bound(exported_tiny, tmp_path_factory):
    folder = _qdq_export(exported_tiny, tmp_path_factory, "fp8")
    model = onnx.load_model(str(folder / "unet" / "model.onnx"))
    assert any(o.version >= 19 for o in model.opset_import if o.domain in ("", "ai.onnx"))
    codes = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT8E4M3FN]
    spec = Manifest.load(folder).components["unet"]
    assert spec.qdq.qdq == "fp8" and len(codes) == spec.qdq.nodes_quantized
    assert spec.validation["passed"] and 0 < spec.qdq.rms_rel_error <= spec.qdq.error_bound
