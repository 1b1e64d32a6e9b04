"""`sdrt export --qdq int8|fp8`: the Q/DQ graph's structure, its error against the fp32 graph
within the bound its scales give, the manifest, and the refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

import fake_tensorrt
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


def test_a_prompt_the_export_never_saw_is_within_the_bound_too(int8_export, exported_tiny):
    """The bound is checked on the held-out prompt at export; on another prompt's whole run (the
    graph as written, as TensorRT reads it) the error stays within it on this model."""
    import onnxruntime as ort

    from sdrt.export.qdq_calibration import CALIBRATION_PROMPTS, record_denoiser_inputs

    spec = Manifest.load(int8_export).components["unet"]
    _, (calls,) = record_denoiser_inputs(exported_tiny(), [CALIBRATION_PROMPTS[-1]], STEPS, lambda line: None)
    as_written = ort.SessionOptions()
    as_written.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    fp32 = ort.InferenceSession(str(exported_tiny() / "unet" / "model.onnx"), providers=["CPUExecutionProvider"])
    qdq = ort.InferenceSession(str(int8_export / spec.file), as_written, providers=["CPUExecutionProvider"])
    outputs = [(fp32.run(["out_sample"], feeds)[0], qdq.run(["out_sample"], feeds)[0]) for feeds in calls]
    error = np.sqrt(sum(np.sum((got - want) ** 2) for want, got in outputs) / sum(np.sum(w**2) for w, _ in outputs))
    assert 0 < error <= spec.qdq.error_bound


def test_info_names_the_qdq_unet(int8_export):
    result = CliRunner().invoke(main, ["info", str(int8_export)])
    assert result.exit_code == 0 and "unet: fp32 for cpu" in result.output
    assert "int8 Q/DQ for TensorRT" in result.output and "layers quantized" in result.output


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


@pytest.fixture(scope="module")
def fp8_export(exported_tiny, tmp_path_factory) -> Path:
    return _qdq_export(exported_tiny, tmp_path_factory, "fp8")


@pytest.mark.slow
def test_fp8_graph_holds_float8_weights_within_its_bound(fp8_export):
    folder = fp8_export
    model = onnx.load_model(str(folder / "unet" / "model.onnx"))
    assert any(o.version >= 19 for o in model.opset_import if o.domain in ("", "ai.onnx"))
    float8 = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT8E4M3FN}
    codes = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in float8]  # weights
    spec = Manifest.load(folder).components["unet"]
    assert spec.qdq.qdq == "fp8" and len(codes) == spec.qdq.nodes_quantized
    assert spec.validation["passed"] and 0 < spec.qdq.rms_rel_error <= spec.qdq.error_bound


# ---------------------------------------------------------------- sdrt build (tests/fake_tensorrt.py)
@pytest.fixture()
def int8_model(int8_export, tmp_path) -> Path:
    """A private copy: builds write into the model folder."""
    folder = tmp_path / "model"
    shutil.copytree(int8_export, folder)
    return folder


def _build(model: Path, *arguments):
    return CliRunner().invoke(main, ["build", str(model), "--static", "64x64", "--max-batch", "2", *arguments])


def test_an_int8_qdq_unet_builds_weakly_typed_with_int8_and_fp16(int8_model, monkeypatch):
    from sdrt.runtime.pipeline import Pipeline

    stats = fake_tensorrt.install(monkeypatch)
    result = _build(int8_model)
    assert result.exit_code == 0, result.output
    unet = next(b for b in stats.builds if b["onnx"].endswith("unet/model.onnx"))
    assert unet["int8"] and unet["fp16"] and not unet["fp8"] and not unet["strongly_typed"]
    assert unet["qdq_types"] == ["int8"] and unet["pinned_fp32"] > 0 and not unet["refittable"]
    assert not any(b["int8"] for b in stats.builds if b is not unet)  # the rest has no Q/DQ
    record = json.loads(next((int8_model / "tensorrt").glob("unet-*.plan.json")).read_text())
    assert record["key"]["precision"] == "int8"
    settings = dict(prompt="a cat", steps=2, seed=1)
    expected = Pipeline.load(int8_model).generate(**settings).array
    np.testing.assert_allclose(
        Pipeline.load(int8_model, backend="tensorrt").generate(**settings).array, expected, atol=1e-5
    )


def test_the_fake_refuses_a_qdq_build_without_its_flag(int8_model, monkeypatch):
    """The strict fake is what the test above relies on: without BuilderFlag.INT8 it fails."""
    from sdrt.runtime.engines.tensorrt import build

    fake_tensorrt.install(monkeypatch)
    monkeypatch.setitem(build.QDQ_BUILDER_FLAGS, "int8", "TF32")
    result = _build(int8_model)
    assert result.exit_code != 0 and "without BuilderFlag.INT8" in str(result.exception)


def test_fp8_is_refused_in_one_line_below_compute_capability_8_9(int8_model, monkeypatch):
    manifest = json.loads((int8_model / "manifest.json").read_text())
    manifest["components"]["unet"]["qdq"]["qdq"] = "fp8"  # what an fp8 export records
    (int8_model / "manifest.json").write_text(json.dumps(manifest))
    stats = fake_tensorrt.install(monkeypatch, capability=(8, 6))
    result = _build(int8_model)
    assert result.exit_code != 0 and not stats.builds and "Traceback" not in result.output
    assert "compute capability 8.6" in result.output and "--qdq int8" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_an_fp8_qdq_unet_builds_with_fp8_on_hopper(fp8_export, tmp_path, monkeypatch):
    folder = tmp_path / "model"
    shutil.copytree(fp8_export, folder)
    stats = fake_tensorrt.install(monkeypatch)  # compute capability 9.0
    result = _build(folder)
    assert result.exit_code == 0, result.output
    unet = next(b for b in stats.builds if b["onnx"].endswith("unet/model.onnx"))
    assert unet["fp8"] and unet["fp16"] and not unet["int8"] and unet["qdq_types"] == ["float8_e4m3fn"]
