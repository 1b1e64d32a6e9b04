"""`sdrt export` on the tiny models: validated ONNX, the manifest, diffusers compatibility, errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jsonschema
import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from diffusers import OnnxStableDiffusionPipeline, StableDiffusionPipeline

import sdrt.export.exporter as exporter
from sdrt.cli import main
from sdrt.errors import ModelFolderError
from sdrt.export.sources import load_pipeline
from sdrt.export.validation import RELATIVE_TOLERANCE
from sdrt.runtime.manifest import Manifest, residual_names

SCHEMA = json.loads((Path(__file__).parent.parent.parent / "sdrt" / "runtime" / "manifest.schema.json").read_text())
ONNX_TYPES = {
    "float32": "tensor(float)",
    "float16": "tensor(float16)",
    "int32": "tensor(int32)",
    "int64": "tensor(int64)",
}


@pytest.fixture(scope="session")
def exported(tiny_models, exported_tiny) -> dict[str, Path]:
    """Every tiny kind exported (the session's exports, which other tests share; read only)."""
    return {kind: exported_tiny(kind) for kind in tiny_models}


@pytest.mark.parametrize("kind", ["standard", "inpaint", "v_prediction"])
def test_folder_layout_manifest_and_validation(exported, tiny_models, kind):
    folder = exported[kind]
    data = json.loads((folder / "manifest.json").read_text())
    jsonschema.validate(data, SCHEMA)
    manifest = Manifest.load(folder)
    source_unet = json.loads((tiny_models[kind] / "unet" / "config.json").read_text())
    source_vae = json.loads((tiny_models[kind] / "vae" / "config.json").read_text())
    assert manifest.unet_in_channels == source_unet["in_channels"] == (9 if kind == "inpaint" else 4)
    assert manifest.vae_scaling_factor == source_vae["scaling_factor"]
    assert manifest.prediction_type == ("v_prediction" if kind == "v_prediction" else "epsilon")
    assert manifest.family == ("sd2" if kind == "v_prediction" else "sd1")
    assert manifest.native_height == source_unet["sample_size"] * manifest.vae_scale_factor
    assert set(manifest.components) == {"text_encoder", "unet", "vae_decoder", "vae_encoder"}
    for name, spec in manifest.components.items():
        path = folder / spec.file
        assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.sha256
        validation = spec.validation
        assert validation["passed"] and validation["max_rel_error"] <= RELATIVE_TOLERANCE["fp32"]
        assert (spec.precision, spec.target, validation["graph"]) == ("fp32", "cpu", "exported")
        first, second = validation["shapes"]
        assert second[0] > 1 and second[-1] != second[-2], "a batch > 1, non-square shape is validated"
        # The graph's tensors are the manifest's, by name and dtype; the extra token rows (textual
        # inversion) and the UNet's ControlNet residuals have default values, so callers that do
        # not know them may leave them out.
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inputs = session.get_inputs() + session.get_overridable_initializers()
        for specs, actual in ((spec.inputs, inputs), (spec.outputs, session.get_outputs())):
            assert [(t.name, ONNX_TYPES[t.dtype]) for t in specs] == [(a.name, a.type) for a in actual]
        defaults = {"text_encoder": ["extra_token_embeddings"], "unet": residual_names(spec)}.get(name, [])
        assert [a.name for a in session.get_overridable_initializers()] == defaults
        assert name != "unet" or len(defaults) == 5  # the tiny UNet: conv_in, 1 + 1 + 1 down, mid
    for name in ("model_index.json", "scheduler/scheduler_config.json", "tokenizer/tokenizer_config.json"):
        assert (folder / name).is_file()


@pytest.mark.parametrize("kind", ["standard", "v_prediction"])
def test_folder_runs_in_diffusers_onnx_pipeline_like_torch(exported, tiny_models, kind):
    onnx_pipe = OnnxStableDiffusionPipeline.from_pretrained(exported[kind], provider="CPUExecutionProvider")
    torch_pipe = StableDiffusionPipeline.from_pretrained(tiny_models[kind])
    for pipe in (onnx_pipe, torch_pipe):
        pipe.set_progress_bar_config(disable=True)
    manifest = Manifest.load(exported[kind])
    side = manifest.native_height // manifest.vae_scale_factor
    latents = np.random.default_rng(0).standard_normal((1, manifest.latent_channels, side, side)).astype(np.float32)
    size = {"height": manifest.native_height, "width": manifest.native_width}
    got = onnx_pipe("a photo of a cat", num_inference_steps=3, output_type="np", latents=latents, **size).images
    expected = torch_pipe(
        "a photo of a cat", num_inference_steps=3, output_type="np", latents=torch.from_numpy(latents), **size
    ).images
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1 / 255


def test_vae_encoder_gives_the_latent_distribution(exported, tiny_models):
    """Mean and std of diffusers' latent distribution, so the runtime samples with its seed."""
    pipe = StableDiffusionPipeline.from_pretrained(tiny_models["standard"])
    image = torch.rand(2, 3, 64, 96) * 2 - 1
    with torch.no_grad():
        distribution = pipe.vae.encode(image).latent_dist
    session = ort.InferenceSession(str(exported["standard"] / "vae_encoder" / "model.onnx"))
    mean, std = session.run(["latent_mean", "latent_std"], {"sample": image.numpy()})
    np.testing.assert_allclose(mean, distribution.mean.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(std, distribution.std.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_cli_export_overwrite_and_refusals(tiny_models, tmp_path):
    runner = CliRunner()
    out = tmp_path / "engine"
    result = runner.invoke(main, ["export", str(tiny_models["standard"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    first = (out / "manifest.json").read_text()
    result = runner.invoke(main, ["export", str(tiny_models["standard"]), "--out", str(out)])
    assert result.exit_code == 2 and "pass --overwrite" in result.output
    result = runner.invoke(main, ["export", str(tiny_models["inpaint"]), "--out", str(out), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert (out / "manifest.json").read_text() != first
    assert Manifest.load(out).unet_in_channels == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine"], "no staging or old folders left"


def test_failed_validation_leaves_nothing_behind(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setitem(RELATIVE_TOLERANCE, "fp32", 0.0)
    with pytest.raises(exporter.ExportError, match="does not reproduce the PyTorch model"):
        exporter.export_model(str(tiny_models["standard"]), tmp_path / "engine", progress=lambda line: None)
    assert list(tmp_path.iterdir()) == []


def _copy_tree(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target)
    return target


@pytest.mark.parametrize(
    "make_source, message",
    [
        (lambda tmp, tiny: str(tmp), "is not a diffusers model folder"),
        (lambda tmp, tiny: str(tmp / "nope"), "does not exist"),
        (lambda tmp, tiny: _write(tmp / "weights.bin", b"x"), "is not a checkpoint"),
        (lambda tmp, tiny: _write(tmp / "broken.safetensors", b"not a checkpoint"), "cannot load checkpoint"),
        (lambda tmp, tiny: _remove(_copy_tree(tiny, tmp / "m"), "unet"), "lacks the component folder"),
        (lambda tmp, tiny: _sdxl(_copy_tree(tiny, tmp / "m")), "lacks the component folder(s): text_encoder_2"),
        (lambda tmp, tiny: _sd3(_copy_tree(tiny, tmp / "m")), "lacks the component folder(s): transformer"),
    ],
    ids=[
        "no-model-index",
        "missing",
        "not-a-checkpoint",
        "corrupt-checkpoint",
        "missing-unet",
        "sdxl-incomplete",
        "sd3",
    ],
)
def test_bad_sources_are_one_line_errors(tiny_models, tmp_path, make_source, message):
    source_dir = tmp_path / "src"
    source_dir.mkdir()
    source = make_source(source_dir, tiny_models["standard"])
    result = CliRunner().invoke(main, ["export", source, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable when imported: without this it retries the network.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelFolderError, match="cannot download someone/some-model"):
        load_pipeline("someone/some-model")


def _write(path: Path, content: bytes) -> str:
    path.write_bytes(content)
    return str(path)


def _remove(folder: Path, component: str) -> str:
    import shutil

    shutil.rmtree(folder / component)
    return str(folder)


def _sd3(folder: Path) -> str:
    index = json.loads((folder / "model_index.json").read_text())
    index["text_encoder_3"] = ["transformers", "T5EncoderModel"]
    (folder / "model_index.json").write_text(json.dumps(index))
    return str(folder)


def _sdxl(folder: Path) -> str:
    index = json.loads((folder / "model_index.json").read_text())
    index["text_encoder_2"] = ["transformers", "CLIPTextModelWithProjection"]
    (folder / "model_index.json").write_text(json.dumps(index))
    return str(folder)


def _export(tiny_models, tmp_path, **options) -> Manifest:
    return exporter.export_model(
        str(tiny_models["standard"]),
        tmp_path / "engine",
        options=exporter.ExportOptions(**options),
        progress=lambda line: None,
    )


@pytest.fixture(scope="module")
def fp16_external(tiny_models, tmp_path_factory) -> Path:
    """One fp16 export, every weight past a 1-byte protobuf limit: the UNet and text encoder in
    fp16 and the VAE in fp32 (its default) each write their weights to one external data file,
    so this one export serves the fp16 checks and the external-data checks, both precisions."""
    import sdrt.export.onnx_graph as onnx_graph

    root = tmp_path_factory.mktemp("fp16-external")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(onnx_graph, "PROTOBUF_LIMIT_BYTES", 1)
        _export(tiny_models, root, precision="fp16")
    return root / "engine"


def test_fp16_keeps_the_vae_fp32_by_default_and_is_validated(fp16_external):
    manifest = Manifest.load(fp16_external)
    unet = manifest.components["unet"]
    assert unet.precision == "fp16" and manifest.components["text_encoder"].precision == "fp16"
    assert manifest.components["vae_decoder"].precision == "fp32"
    dtypes = {t.name: t.dtype for t in unet.inputs + unet.outputs}
    assert dtypes == {
        "sample": "float16",
        "timestep": "float32",
        "encoder_hidden_states": "float16",
        "out_sample": "float16",
        **{name: "float16" for name in residual_names(unet)},
    }
    for spec in manifest.components.values():
        tolerance = RELATIVE_TOLERANCE[spec.precision]
        assert spec.validation["tolerance"] == tolerance and spec.validation["max_rel_error"] <= tolerance
    # fp16 really changes the numbers (the check is not vacuous) but stays close.
    assert 1e-5 < unet.validation["max_rel_error"]


@pytest.mark.slow  # 24 s: a whole fp16 export for one VAE dtype flag (the default fp16 export is checked by default)
def test_fp16_vae_when_asked(tiny_models, tmp_path):
    manifest = _export(tiny_models, tmp_path, precision="fp16", vae_precision="fp16")
    decoder = manifest.components["vae_decoder"]
    assert decoder.precision == "fp16" and decoder.outputs[0].dtype == "float16"
    assert decoder.validation["passed"]


def test_cpu_optimized_graph_is_validated_itself(tiny_models, tmp_path):
    manifest = _export(tiny_models, tmp_path, optimize=True)
    for spec in manifest.components.values():
        assert spec.validation["graph"] == "optimized" and spec.validation["passed"]
        assert spec.validation["max_rel_error"] <= RELATIVE_TOLERANCE["fp32"]


@pytest.mark.slow  # 17 s: the whole tiny model through the CUDA optimizer
def test_cuda_optimized_graph_has_the_fused_diffusion_ops(tiny_models, tmp_path):
    import onnx

    manifest = _export(tiny_models, tmp_path, precision="fp16", target="cuda", optimize=True)
    unet = manifest.components["unet"]
    assert unet.target == "cuda"
    ops = {node.op_type for node in onnx.load(str(tmp_path / "engine" / unet.file)).graph.node}
    assert {"MultiHeadAttention", "GroupNorm", "BiasSplitGelu"} <= ops
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        # Here the fused graph cannot run: the same-precision graph before fusion was checked.
        assert unet.validation["graph"] == "exported" and unet.validation["provider"] == "CPUExecutionProvider"
    assert unet.validation["passed"]


def test_large_weights_go_to_one_external_data_file(fp16_external):
    folder = fp16_external
    manifest = Manifest.load(folder)
    assert {spec.precision for spec in manifest.components.values()} == {"fp16", "fp32"}
    for name, spec in manifest.components.items():
        ((data_file, digest),) = [(k, v) for k, v in spec.data_files.items() if k != spec.weights_map]
        assert data_file == f"{name}/model.onnx.data"
        assert hashlib.sha256((folder / data_file).read_bytes()).hexdigest() == digest
        assert (folder / spec.file).stat().st_size < (folder / data_file).stat().st_size
        assert spec.validation["passed"]
    session = ort.InferenceSession(str(folder / "unet" / "model.onnx"))
    assert [i.name for i in session.get_inputs()] == ["sample", "timestep", "encoder_hidden_states"]


@pytest.mark.parametrize("fp16", [False, True])
def test_streamed_conversion_of_external_weights_equals_the_in_memory_one(exported_tiny, tmp_path, fp16):
    """A graph whose weights are external files (what torch writes past 2 GB: SDXL's UNet) is
    converted tensor by tensor; the result equals converting the same graph held in memory."""
    import onnx
    from onnx import numpy_helper

    import sdrt.export.onnx_graph as onnx_graph

    source = exported_tiny("standard") / "unet" / "model.onnx"
    (tmp_path / "external").mkdir()
    external = tmp_path / "external" / "model.onnx"
    onnx.save_model(
        onnx.load_model(str(source)),
        str(external),
        save_as_external_data=True,
        all_tensors_to_one_file=False,
        size_threshold=0,
    )
    single = tmp_path / "single.onnx"  # the same graph with its weights inside (the export's are external)
    onnx.save_model(onnx.load_model(str(source)), str(single))
    streamed = onnx_graph.convert(external, tmp_path / "streamed.onnx", fp16)
    in_memory = onnx_graph.convert(single, tmp_path / "in_memory.onnx", fp16)
    assert [p.name for p in streamed] == ["streamed.onnx", "streamed.onnx.data"] and len(in_memory) == 1

    def weights(path):
        model = onnx.load_model(str(path))
        return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}

    got, expected = weights(streamed[0]), weights(in_memory[0])
    assert got.keys() == expected.keys()
    assert {name: value.dtype for name, value in got.items()} == {n: v.dtype for n, v in expected.items()}
    assert all(np.array_equal(got[name], expected[name]) for name in expected)
    assert any(value.dtype == (np.float16 if fp16 else np.float32) and value.size > 100 for value in got.values())
    feeds = {
        "sample": np.ones((2, 4, 8, 8), np.float32),
        "timestep": np.array([500], np.float32),
        "encoder_hidden_states": np.ones((2, 77, 32), np.float32),
    }
    outputs = []
    for files in (streamed, in_memory):
        session = ort.InferenceSession(str(files[0]))
        types = {i.name: np.float16 if i.type == ONNX_TYPES["float16"] else np.float32 for i in session.get_inputs()}
        outputs.append(session.run(None, {name: value.astype(types[name]) for name, value in feeds.items()})[0])
    np.testing.assert_array_equal(outputs[0], outputs[1])
