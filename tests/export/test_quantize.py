"""`sdrt export --weights int8|int4`: MatMulNBits graphs, their bound, the manifest, info and LoRA."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from sdrt.cli import main
from sdrt.export.exporter import ExportOptions
from sdrt.export.quantize import (
    PLAIN_OP,
    QUANTIZED_OP,
    QuantizationError,
    dequantize_into,
    load_for_quantization,
    quantize_file,
)
from sdrt.export.validation import RELATIVE_TOLERANCE
from sdrt.runtime.manifest import DEFAULT_WEIGHT_BLOCK, WEIGHT_FORMATS, Manifest
from sdrt.runtime.manifest_checks import SCHEMA_PATH
from tests.conftest import diffusers_pipeline
from tests.support.images import MAX_PIXEL_ERROR
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
    quantized, sources = quantize_file(unet, bits, DEFAULT_WEIGHT_BLOCK)
    reference = load_for_quantization(unet)
    exported = {t.name: numpy_helper.to_array(t) for t in reference.graph.initializer if t.name in sources.values()}
    figures, _ = dequantize_into(quantized, reference, sources)
    dequant = {t.name: numpy_helper.to_array(t) for t in reference.graph.initializer if t.name in exported}
    packed = [n for n in quantized.graph.node if n.op_type == QUANTIZED_OP]
    assert packed and all({a.name: a.i for a in n.attribute}["bits"] == bits for n in packed)
    assert len(exported) == len(packed)  # one fp32 weight per packed node
    for name, original in exported.items():
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


LORA_WEIGHT = 0.7


@pytest.fixture(scope="module")
def locon(tiny_models, tmp_path_factory) -> Path:
    reference = diffusers_pipeline("StableDiffusionPipeline", tiny_models["standard"])
    return kohya_lora(reference, tmp_path_factory.mktemp("lora") / "locon.safetensors", seed=2, conv=True)


def _block_step(weight: np.ndarray, bits: int) -> np.ndarray:
    """Per weight [K, N]: its block's (blocks of DEFAULT_WEIGHT_BLOCK along K) largest magnitude
    over 2^(bits-1), the quantization step of a symmetric block."""
    k, n = weight.shape
    padded = np.zeros((-(-k // DEFAULT_WEIGHT_BLOCK) * DEFAULT_WEIGHT_BLOCK, n), np.float32)
    padded[:k] = np.abs(weight)
    step = padded.reshape(-1, DEFAULT_WEIGHT_BLOCK, n).max(axis=1) / 2 ** (bits - 1)
    return np.repeat(step, DEFAULT_WEIGHT_BLOCK, axis=0)[:k]


def _linear_and_conv_weights(model) -> dict[str, np.ndarray]:
    """Module path -> weight (PEFT's wrapped `base_layer`s under the layer's own path)."""
    from torch.nn import Conv2d, Linear

    return {
        name.replace(".base_layer", "").removeprefix("text_model."): module.weight.detach().numpy().copy()
        for name, module in model.named_modules()
        if isinstance(module, (Linear, Conv2d))
    }


def assert_merged_within_steps(
    export: Path, component: str, lora: Path, unmerged: dict, fused: dict, bits: int, denoiser: str = "unet"
):
    """Each packed weight sdrt merges `lora` into is within the two steps the arithmetic allows
    of the fp32 merge `fused`: the exported weight is within one step s0 of the fp32 one, and
    packing (exported + delta) adds at most one step of its new block, whose largest magnitude is
    at most the fused block's plus s0. The unmerged weights must break that bound (so the check
    can fail); weights kept fp32 (convolutions) merge exactly. Returns (packed, fp32) layers."""
    from sdrt.runtime.features.lora.files import read_lora
    from sdrt.runtime.features.lora.merge import LoraWeights, merged_tensors, resolve
    from sdrt.runtime.features.lora.weights_map import WeightsMap
    from sdrt.runtime.packed_weights import unpack

    specs = Manifest.load(export).components
    maps = {name: WeightsMap.load(export, name, specs[name]) for name in {component, denoiser}}
    weights = maps[component]
    resolved = resolve(read_lora(lora), maps)
    merged = merged_tensors(component, [(resolved, LoraWeights(LORA_WEIGHT, LORA_WEIGHT))], weights)
    packed, kept = 0, 0
    for _, module in resolved.layers[component]:
        mapped = weights.weights[module]
        truth = mapped.to_graph(fused[module])
        if mapped.packed is None:
            np.testing.assert_allclose(merged[mapped.initializer], truth, rtol=1e-5, atol=1e-6)
            kept += 1
            continue
        got = unpack(mapped.packed, merged[mapped.packed.codes], merged[mapped.packed.scales])[0]
        s0 = _block_step(mapped.to_graph(unmerged[module]), bits)
        bound = s0 + (_block_step(truth, bits) + s0 / 2 ** (bits - 1)) + 1e-6
        assert np.all(np.abs(got - truth) <= bound), module
        assert np.any(np.abs(mapped.to_graph(unmerged[module]) - truth) > bound), module
        packed += 1
    return packed, kept


def test_a_lora_merges_into_packed_weights_within_their_steps(int4_export, tiny_models, locon):
    """Against diffusers' load_lora_weights + fuse_lora in fp32 (assert_merged_within_steps)."""
    reference = diffusers_pipeline("StableDiffusionPipeline", tiny_models["standard"])
    unmerged = _linear_and_conv_weights(reference.unet)
    reference.load_lora_weights(str(locon))
    reference.fuse_lora(lora_scale=LORA_WEIGHT)
    fused = _linear_and_conv_weights(reference.unet)
    packed, kept = assert_merged_within_steps(int4_export, "unet", locon, unmerged, fused, WEIGHT_FORMATS["int4"])
    assert packed >= 40 and kept > 0


@pytest.mark.slow
def test_a_lora_merges_into_a_quantized_flux_transformer_and_clip(tiny_flux, tmp_path):
    """The same on FLUX.1 int8 (the transformer's Gemm layers packed too) with a PEFT LoRA of
    every transformer Linear and CLIP's attention and MLP, then an image from it."""
    from diffusers import FluxPipeline

    from sdrt.runtime.pipeline import Pipeline
    from tests.support.dit_lora_files import peft_lora

    export = tmp_path / "flux-int8"
    result = CliRunner().invoke(main, ["export", str(tiny_flux["dev"]), "--out", str(export), "--weights", "int8"])
    assert result.exit_code == 0, result.output
    reference = FluxPipeline.from_pretrained(tiny_flux["dev"])
    lora = peft_lora(reference, tmp_path / "peft.safetensors", seed=1)
    models = {"transformer": reference.transformer, "text_encoder": reference.text_encoder}
    unmerged = {name: _linear_and_conv_weights(model) for name, model in models.items()}
    reference.load_lora_weights(str(lora))
    reference.fuse_lora(components=list(models), lora_scale=LORA_WEIGHT)
    for name, model in models.items():
        fused = _linear_and_conv_weights(model)
        bits = WEIGHT_FORMATS["int8"]
        packed, _ = assert_merged_within_steps(export, name, lora, unmerged[name], fused, bits, "transformer")
        assert packed > 0
    pipeline = Pipeline.load(export)
    settings = dict(steps=1, seed=3, height=64, width=64)
    with_lora = pipeline.generate("a cat", loras=[f"{lora}:{LORA_WEIGHT}"], **settings).array
    assert np.abs(with_lora - pipeline.generate("a cat", **settings).array).max() > 10 * MAX_PIXEL_ERROR


def test_a_lora_on_a_quantized_export_runs_the_packed_weights_it_merged(int4_export, locon, tmp_path):
    """The engine ONNX Runtime builds with the merged codes and scales as initializer overrides
    (from the optimized-graph cache and without it) computes what a graph holding them does; a
    LoRA then changes the image."""
    import onnxruntime as ort
    from onnx import numpy_helper

    from sdrt.runtime.engines.onnxruntime import open_session
    from sdrt.runtime.features.lora.files import read_lora
    from sdrt.runtime.features.lora.merge import LoraWeights, merged_tensors, resolve
    from sdrt.runtime.features.lora.weights_map import WeightsMap
    from sdrt.runtime.pipeline import Pipeline

    manifest = Manifest.load(int4_export)
    spec = manifest.components["unet"]
    weights = WeightsMap.load(int4_export, "unet", spec)
    merged = merged_tensors(
        "unet", [(resolve(read_lora(locon), {"unet": weights}), LoraWeights(LORA_WEIGHT, LORA_WEIGHT))], weights
    )
    graph = onnx.load_model(str(int4_export / spec.file))
    for tensor in graph.graph.initializer:
        if tensor.name in merged:
            tensor.CopyFrom(numpy_helper.from_array(merged[tensor.name], tensor.name))
    written = tmp_path / "merged.onnx"
    onnx.save_model(graph, str(written))
    rng = np.random.default_rng(0)
    feeds = {
        "sample": rng.standard_normal((2, 4, 8, 8), np.float32),
        "timestep": np.array([500.0], np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, 32), np.float32),
    }
    options = ort.SessionOptions()
    options.log_severity_level = 3
    expected = ort.InferenceSession(str(written), options, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    for with_spec in (spec, None):  # the cached optimized graph, then the exported one
        session = open_session(int4_export / spec.file, spec=with_spec, weights=merged)
        got = session.run(None, feeds)[0]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * float(np.abs(expected).max()))

    pipeline = Pipeline.load(int4_export)
    settings = dict(steps=1, seed=3, height=64, width=64)
    base = pipeline.generate("a cat", **settings).array
    with_lora = pipeline.generate("a cat", loras=[f"{locon}:{LORA_WEIGHT}"], **settings).array
    assert np.abs(with_lora - base).max() > MAX_PIXEL_ERROR  # one step: past the image tolerance (2/255)


def test_an_old_quantized_export_without_a_map_is_refused_by_name(int4_export, tmp_path):
    from dataclasses import replace

    from sdrt.runtime.features.lora.weights_map import LoraError, WeightsMap

    spec = replace(Manifest.load(int4_export).components["unet"], weights_map="")
    with pytest.raises(LoraError, match="int4 weights in its unet and no LoRA weights map.*re-export"):
        WeightsMap.load(int4_export, "unet", spec)
