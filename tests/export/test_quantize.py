"""`sdrt export --weights int8|int4`: MatMulNBits graphs, their bound, the manifest, info and LoRA."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from sdrt.cli import main
from sdrt.export.exporter import ExportOptions
from sdrt.export.quantize import (
    PLAIN_OP,
    QUANTIZED_OP,
    QuantizationError,
    quantize_file,
    weight_errors,
)
from sdrt.export.validation import RELATIVE_TOLERANCE
from sdrt.runtime.manifest import DEFAULT_WEIGHT_BLOCK, SCHEMA_PATH, WEIGHT_FORMATS, Manifest
from tests.conftest import diffusers_pipeline
from tests.support.lora_files import kohya_lora

QUANTIZED = ("text_encoder", "unet")
GENERATE = ["--steps", "2", "--height", "64", "--width", "64", "--seed", "3", "--quiet"]


@pytest.fixture(scope="module")
def int4_export(tiny_models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("int4") / "model"
    result = CliRunner().invoke(main, ["export", str(tiny_models["standard"]), "--out", str(out), "--weights", "int4"])
    assert result.exit_code == 0, result.output
    return out


def _nodes(path: Path, op: str) -> list:
    return [node for node in onnx.load_model(str(path)).graph.node if node.op_type == op]


def test_the_graphs_hold_matmulnbits_of_the_asked_bits(int4_export):
    manifest = Manifest.load(int4_export)
    for name in QUANTIZED:
        graph = onnx.load_model(str(int4_export / manifest.components[name].file)).graph
        weights = {t.name for t in graph.initializer}
        packed = [n for n in graph.node if n.op_type == QUANTIZED_OP]
        kept = [n for n in graph.node if n.op_type == PLAIN_OP]
        attributes = [{a.name: a.i for a in n.attribute} for n in packed]
        assert packed and all(a["bits"] == 4 and a["block_size"] == DEFAULT_WEIGHT_BLOCK for a in attributes)
        assert not any(n.input[1] in weights for n in kept)  # only activation x activation MatMuls are left
        quantization = manifest.components[name].quantization
        assert (quantization.matmuls_quantized, quantization.matmuls_kept) == (len(packed), len(kept))
        assert quantization.bits == 4 and quantization.symmetric
    for name in ("vae_decoder", "vae_encoder"):
        assert manifest.components[name].quantization is None
        assert not _nodes(int4_export / manifest.components[name].file, QUANTIZED_OP)


def test_the_error_is_within_what_the_weights_explain(int4_export):
    """The graph computes exactly what its packed weights say (against the fp32 graph holding the
    dequantized weights), and its change against PyTorch stays under the quadrature estimate of
    the layers' weight errors: a wrong packing or scale is off by the weights' whole size."""
    manifest = Manifest.load(int4_export)
    for name in QUANTIZED:
        spec = manifest.components[name]
        assert spec.validation["passed"] and spec.validation["max_rel_error"] <= RELATIVE_TOLERANCE["fp32"]
        quantization = spec.quantization
        assert quantization.max_weight_error_steps <= 1 + 1e-5
        assert 0 < quantization.max_rel_error <= quantization.estimated_output_rel_error


def test_int8_codes_are_within_one_step_of_the_weights(exported_tiny):
    """Independently of the scales stored in the graph: each weight is within one step
    max|w| / 2^(bits-1) of its block (blocks along the input dimension) of its exported value."""
    bits = WEIGHT_FORMATS["int8"]
    unet = Path(exported_tiny("standard")) / "unet" / "model.onnx"
    _, quantized, exported = quantize_file(unet, bits, DEFAULT_WEIGHT_BLOCK)
    dequant, figures = weight_errors(quantized, exported)
    packed = [n for n in quantized.graph.node if n.op_type == QUANTIZED_OP]
    assert packed and all({a.name: a.i for a in n.attribute}["bits"] == bits for n in packed)
    for name, original in exported.values():
        k, n = original.shape
        padded = np.zeros((-(-k // DEFAULT_WEIGHT_BLOCK) * DEFAULT_WEIGHT_BLOCK, n), np.float32)
        padded[:k] = np.abs(original)
        step = padded.reshape(-1, DEFAULT_WEIGHT_BLOCK, n).max(axis=1) / 2 ** (bits - 1)
        bound = np.repeat(step, DEFAULT_WEIGHT_BLOCK, axis=0)[:k]
        assert np.all(np.abs(dequant[name] - original) <= bound * (1 + 1e-5))
    assert figures["max_layer_rel_error"] < 1 / 2 ** (bits - 1)


def test_the_quantized_export_generates_close_to_fp32(int4_export, exported_tiny, tmp_path):
    """Torch-free on ONNX Runtime's CPU kernels, twice (the second run from the optimized-graph
    cache, the same image), and changed by the quantization but not replaced by noise."""
    images = []
    for index, model in enumerate([int4_export, int4_export, exported_tiny("standard")]):
        out = tmp_path / f"{index}.png"
        result = CliRunner().invoke(main, ["generate", "a cat", "--model", str(model), *GENERATE, "--out", str(out)])
        assert result.exit_code == 0, result.output
        from PIL import Image

        images.append(np.asarray(Image.open(out), dtype=np.float64))
    assert np.array_equal(images[0], images[1])
    change = np.abs(images[0] - images[2])
    spread = np.abs(images[2] - images[2].mean())  # what an unrelated image would differ by, roughly
    assert 0 < change.mean() < spread.mean() / 2


def test_manifest_and_info_report_it(int4_export):
    result = CliRunner().invoke(main, ["info", str(int4_export)])
    assert result.exit_code == 0, result.output
    manifest = Manifest.load(int4_export)
    unet = manifest.components["unet"].quantization
    assert "unet: fp32 for cpu" in result.output
    line = next(line for line in result.output.splitlines() if line.strip().startswith("unet:"))
    assert f"int4 weights (block 32, symmetric): {unet.matmuls_quantized} MatMuls quantized" in line
    schema = json.loads(SCHEMA_PATH.read_text())
    quantization = schema["properties"]["components"]["additionalProperties"]["properties"]["quantization"]
    assert quantization["properties"]["weights"]["enum"] == list(WEIGHT_FORMATS)
    assert quantization["properties"]["bits"]["enum"] == list(WEIGHT_FORMATS.values())


def test_bad_weights_options_are_one_clear_line(tiny_models, tmp_path):
    source = str(tiny_models["standard"])
    unknown = CliRunner().invoke(main, ["export", source, "--out", str(tmp_path / "a"), "--weights", "int3"])
    assert unknown.exit_code == 2 and "'int3' is not one of 'int8', 'int4'" in unknown.output
    for arguments, message in [
        (["--weights", "int8", "--target", "cuda"], "is for --target cpu"),
        (["--weights", "int4", "--precision", "fp16"], "drop --precision fp16"),
    ]:
        result = CliRunner().invoke(main, ["export", source, "--out", str(tmp_path / "b"), *arguments])
        lines = result.output.strip().splitlines()
        assert result.exit_code != 0 and len(lines) == 1 and message in lines[0], result.output
    with pytest.raises(QuantizationError, match="weight block must be one of"):
        ExportOptions(weights="int8", weight_block=3)


def test_lora_on_a_quantized_export_is_refused_by_name(int4_export, tiny_models, tmp_path):
    reference = diffusers_pipeline("StableDiffusionPipeline", tiny_models["standard"])
    lora = kohya_lora(reference, tmp_path / "kohya.safetensors", seed=1)
    arguments = ["generate", "a cat", "--model", str(int4_export), *GENERATE, "--out", str(tmp_path / "o.png")]
    result = CliRunner().invoke(main, [*arguments, "--lora", str(lora)])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "int4 weights" in lines[0] and "re-export without --weights" in lines[0]

    from fastapi.testclient import TestClient

    from sdrt.runtime.pipeline import Pipeline
    from sdrt.serve.app import create_app

    with TestClient(create_app(Pipeline.load(int4_export, lora_dir=tmp_path))) as client:
        body = {"prompt": "a cat <lora:kohya:0.7>", "steps": 1, "width": 64, "height": 64}
        refused = client.post("/sdapi/v1/txt2img", json=body)
    error = refused.json()["error"]  # the tag came in the prompt: the field named is the prompt
    assert (
        refused.status_code == 400 and error["param"] == "prompt" and "re-export without --weights" in error["message"]
    )
