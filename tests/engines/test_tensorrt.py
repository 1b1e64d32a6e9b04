"""The TensorRT backend without TensorRT: profiles, cache keys, the memory plan and shape checks
directly; builds and runs through tests/fake_tensorrt.py, a strict stand-in for TensorRT 10 and
cuda-python whose engines compute with ONNX Runtime (so images compare with the CPU path).
What this cannot show is TensorRT's own behaviour; docs/tensorrt.md says how to check that on
a GPU."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import fake_tensorrt
from sdrt.cli import main
from sdrt.errors import ConfigError, SdrtError
from sdrt.runtime.engines.tensorrt.memory import memory_plan
from sdrt.runtime.engines.tensorrt.plan import (
    BuildSettings,
    Device,
    EngineKey,
    component_precision,
    plan_path,
    stale_reason,
)
from sdrt.runtime.engines.tensorrt.profiles import Request, plan_profile
from sdrt.runtime.manifest import Manifest
from sdrt.runtime.pipeline import Pipeline
from sdrt.runtime.sizes import parse_size

DEVICE = Device("10.9.0", fake_tensorrt.DEVICE_NAME, "9.0")


@pytest.fixture(scope="module")
def exported(exported_tiny):
    return exported_tiny("standard")


@pytest.fixture()
def model(exported, tmp_path):
    """A private copy: builds write into the model folder."""
    folder = tmp_path / "model"
    shutil.copytree(exported, folder)
    return folder


@pytest.fixture()
def manifest(exported) -> Manifest:
    return Manifest.load(exported)


# ---------------------------------------------------------------- profiles
def test_default_profile_spans_the_export_and_tunes_for_the_native_size(manifest):
    profile = plan_profile(manifest, max_batch=4)
    assert profile.dims["height"] == (16, 64, 128) and profile.dims["latent_width"] == (2, 8, 16)
    assert profile.dims["batch"] == (1, 1, 4)
    assert profile.dims["unet_batch"] == (1, 2, 8)  # unguided batch 1 .. guided batch 4
    assert profile.dims["timestep_batch"] == (1, 1, 1)
    shapes = profile.shapes(manifest.components["unet"])
    assert shapes["sample"] == ([1, 4, 2, 2], [2, 4, 8, 8], [8, 4, 16, 16])
    # The text context: one chunk at least and to tune for, the export's 4 chunks at most.
    assert shapes["encoder_hidden_states"] == ([1, 77, 32], [2, 77, 32], [8, 4 * 77, 32])
    shorter = plan_profile(manifest, max_prompt_chunks=2).shapes(manifest.components["unet"])
    assert shorter["encoder_hidden_states"][2] == [8, 2 * 77, 32]
    with pytest.raises(ConfigError, match="--max-prompt-chunks must be from 1 to this export's 4, got 5"):
        plan_profile(manifest, max_prompt_chunks=5)


def test_static_and_explicit_profiles(manifest):
    static = plan_profile(manifest, static=parse_size("96x64", "--static"), max_batch=2)
    assert static.static and static.dims["height"] == (64, 64, 64) and static.dims["width"] == (96, 96, 96)
    assert static.dims["latent_width"] == (12, 12, 12)
    ranged = plan_profile(manifest, min_size=(32, 32), opt_size=(64, 64), max_size=(96, 128))
    assert ranged.dims["height"] == (32, 64, 96) and ranged.dims["width"] == (32, 64, 128)
    assert not ranged.static
    values = ranged.values(Request(3, 64, 96, guided=True), manifest.vae_scale_factor)
    assert values["unet_batch"] == 6 and values["latent_height"] == 8 and values["latent_width"] == 12


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(static=(70, 64)), "static height 70 must be a multiple of 16"),
        (dict(max_size=(256, 64)), "max height 256 must be a multiple of 16 within this export's range 16..128"),
        (dict(min_size=(96, 96), opt_size=(64, 64)), "heights must satisfy min <= opt <= max"),
        (dict(static=(64, 64), max_size=(64, 64)), "--static fixes the size"),
        (dict(max_batch=9), "--max-batch must be from 1 to this export's 8"),
    ],
)
def test_bad_profiles_are_clear_errors(manifest, settings, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        plan_profile(manifest, **settings)


@pytest.mark.parametrize("text", ["64", "64x", "x64", "0x64", "axb"])
def test_sizes_parse_or_refuse(text):
    if text == "64":
        assert parse_size(text, "--max") == (64, 64)
    else:
        with pytest.raises(ConfigError, match="--max must be WIDTHxHEIGHT"):
            parse_size(text, "--max")


def test_component_precision_rules(manifest):
    fp32 = manifest.components["unet"]
    fp16 = replace(fp32, precision="fp16")
    assert component_precision("unet", fp32, "fp16") == "fp16"
    assert component_precision("vae_decoder", fp32, "fp16") == "fp32"  # the SD VAE overflows in fp16
    assert component_precision("vae_decoder", fp16, "fp16") == "fp16"  # unless exported so
    with pytest.raises(ConfigError, match="exported in fp16"):
        component_precision("unet", fp16, "fp32")


# ---------------------------------------------------------------- cache keys
def test_every_invalidating_change_changes_the_key(manifest):
    spec = manifest.components["unet"]
    profile = plan_profile(manifest)
    base = EngineKey.of("unet", spec, profile, "fp16", DEVICE)
    variants = {
        "onnx_sha256": EngineKey.of("unet", replace(spec, sha256="0" * 64), profile, "fp16", DEVICE),
        "tensorrt_version": EngineKey.of("unet", spec, profile, "fp16", replace(DEVICE, tensorrt_version="10.10.0")),
        "gpu_name": EngineKey.of("unet", spec, profile, "fp16", replace(DEVICE, gpu_name="NVIDIA H200")),
        "compute_capability": EngineKey.of("unet", spec, profile, "fp16", replace(DEVICE, compute_capability="8.9")),
        "profile": EngineKey.of("unet", spec, plan_profile(manifest, max_batch=2), "fp16", DEVICE),
        "precision": EngineKey.of("unet", spec, profile, "fp32", DEVICE),
        "data_sha256": EngineKey.of(
            "unet", replace(spec, data_files={"model.onnx.data": "1" * 64}), profile, "fp16", DEVICE
        ),
    }
    digests = {base.digest()}
    for field, key in variants.items():
        assert key.digest() not in digests, field
        digests.add(key.digest())
        assert [change.split(":")[0] for change in key.changes_from(base.to_json())] == [field]
    # A profile change that does not touch a component's tensors keeps its key.
    text = manifest.components["text_encoder"]
    assert (
        EngineKey.of("text_encoder", text, plan_profile(manifest, max_size=(96, 96)), "fp16", DEVICE).digest()
        == EngineKey.of("text_encoder", text, profile, "fp16", DEVICE).digest()
    )


# ---------------------------------------------------------------- memory plan
def test_memory_plan_shares_one_activation_block(manifest):
    profile = plan_profile(manifest, max_batch=2)
    components = ["text_encoder", "unet", "vae_decoder"]
    plan = memory_plan(manifest, profile, components, {"text_encoder": 1000, "unet": 50_000, "vae_decoder": 30_000})
    assert plan.shared_activation_bytes == 50_176  # the largest need, rounded up to 256
    assert plan.saved_bytes == 31_000 - 176
    # UNet IO at the largest shapes: sample and out_sample 4x4x16x16 fp32, timestep 1, context 4x(4x77)x32,
    # and the ControlNet residuals (channels, latent side over): (32, 1) twice, (32, 2), (64, 2), mid (64, 2).
    residuals = sum(
        4 * channels * (16 // factor) ** 2 * 4 for channels, factor in ((32, 1), (32, 1), (32, 2), (64, 2), (64, 2))
    )
    expected_unet = 2 * 4 * 4 * 16 * 16 * 4 + 256 + 4 * 4 * 77 * 32 * 4 + residuals
    assert plan.io_bytes["unet"] == expected_unet
    assert plan.total_bytes == sum(plan.io_bytes.values()) + plan.shared_activation_bytes


# ---------------------------------------------------------------- without TensorRT
def test_without_tensorrt_the_backend_says_what_to_install(model, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    result = CliRunner().invoke(main, ["build", str(model), "--static", "64x64"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip() == (
        "error: the tensorrt backend needs TensorRT >= 10 and cuda-python on a machine "
        "with an NVIDIA GPU: pip install 'sdrt[tensorrt]' (tensorrt is missing)"
    )


def test_loading_without_a_build_says_to_build(model):
    with pytest.raises(SdrtError, match=f"build them with `sdrt build {model}`"):
        Pipeline.load(model, backend="tensorrt")


# ---------------------------------------------------------------- through the fake
def build(model, *arguments) -> str:
    result = CliRunner().invoke(main, ["build", str(model), *arguments])
    assert result.exit_code == 0, result.output
    return result.output


def test_build_writes_engines_keys_and_a_reused_timing_cache(model, monkeypatch):
    stats = fake_tensorrt.install(monkeypatch)
    output = build(model, "--static", "64x64", "--max-batch", "2")
    assert len(stats.builds) == 4 and "4 engines ready" in output
    assert "unet: fp16, " in output and "kept in fp32" in output  # fp32 export, fp16 build: norms pinned
    unet = next(b for b in stats.builds if b["onnx"].endswith("unet/model.onnx"))
    assert unet["fp16"] and unet["pinned_fp32"] > 0 and not unet["strongly_typed"]
    assert unet["profile"]["sample"] == [[1, 4, 8, 8], [2, 4, 8, 8], [4, 4, 8, 8]]
    vae = next(b for b in stats.builds if b["onnx"].endswith("vae_decoder/model.onnx"))
    assert not vae["fp16"]  # the VAE stays fp32
    engines = model / "tensorrt"
    assert len(list(engines.glob("*.plan"))) == 4 and len(list(engines.glob("*.plan.json"))) == 4
    assert json.loads((engines / "timing.cache").read_bytes()) and (engines / "build.json").is_file()
    record = json.loads(next(engines.glob("unet-*.plan.json")).read_text())
    assert record["key"]["gpu_name"] == fake_tensorrt.DEVICE_NAME and record["key"]["precision"] == "fp16"
    # Again: nothing to do.
    again = build(model, "--static", "64x64", "--max-batch", "2")
    assert len(stats.builds) == 4 and again.count("up to date") == 4


def test_trt_images_equal_the_cpu_path_and_the_unet_replays_a_cuda_graph(model, monkeypatch):
    stats = fake_tensorrt.install(monkeypatch)
    build(model, "--static", "64x64", "--max-batch", "2")
    cpu = Pipeline.load(model)
    trt = Pipeline.load(model, backend="tensorrt")
    for settings in (
        dict(prompt="a photo of a cat", steps=4, seed=3),
        dict(prompt=["a cat", "a dog"], steps=3, seed=[1, 2], sampler="euler_a"),
        dict(prompt="a cat", steps=2, seed=5, guidance_scale=1.0),
    ):
        expected = cpu.generate(**settings).array
        got = trt.generate(**settings).array
        np.testing.assert_allclose(got, expected, atol=1e-5)
    # The UNet ran once plainly per shape, was captured, and every other step replayed the graph.
    assert stats.captures == 3 and stats.graph_launches == (4 - 1) + (3 - 1) + (2 - 1)
    assert stats.executions["unet"] == 4 + 3 + 2


def test_trt_image_to_image_loads_the_encoder_into_the_shared_memory(model, monkeypatch, tmp_path):
    stats = fake_tensorrt.install(monkeypatch)
    build(model, "--static", "64x64")
    image = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(image)
    trt = Pipeline.load(model, backend="tensorrt")
    assert "vae_encoder" not in trt.engines
    got = trt.generate("a cat", steps=4, seed=2, init_image=image, strength=0.5).array
    expected = Pipeline.load(model).generate("a cat", steps=4, seed=2, init_image=image, strength=0.5).array
    np.testing.assert_allclose(got, expected, atol=1e-5)
    runtime = trt.engines["unet"].runtime
    assert set(runtime.engines) == {"text_encoder", "unet", "vae_decoder", "vae_encoder"}
    assert stats.executions["vae_encoder"] == 1
    plan = runtime.memory()
    assert plan.shared_activation_bytes == max(fake_tensorrt.ACTIVATION_BYTES.values())
    assert plan.saved_bytes == sum(fake_tensorrt.ACTIVATION_BYTES.values()) - plan.shared_activation_bytes


def test_requests_outside_the_built_profile_are_clear_errors(model, monkeypatch):
    fake_tensorrt.install(monkeypatch)
    build(model, "--static", "64x64", "--max-batch", "2")
    trt = Pipeline.load(model, backend="tensorrt")
    with pytest.raises(SdrtError, match="height 96 is outside this export's range 64..64"):
        trt.generate("a cat", steps=1, height=96)
    with pytest.raises(SdrtError, match="3 images at once exceed this export's batch limit of 2"):
        trt.generate("a cat", steps=1, num_images=3)
    with pytest.raises(SdrtError, match="unet_batch 8 is outside the range its TensorRT engine was built for"):
        trt.engines["unet"].run(
            {
                "sample": np.zeros((8, 4, 8, 8), np.float32),
                "timestep": np.zeros(1, np.float32),
                "encoder_hidden_states": np.zeros((8, 77, 32), np.float32),
            }
        )


def test_a_foreign_engine_is_rebuilt_with_a_message_naming_the_change(model, monkeypatch):
    fake_tensorrt.install(monkeypatch)
    build(model, "--static", "64x64")
    stats = fake_tensorrt.install(monkeypatch, device_name="NVIDIA H200")  # the folder moved to another GPU
    messages: list[str] = []
    Pipeline.load(model, backend="tensorrt", progress=messages.append)
    rebuilt = [line for line in messages if "rebuilding" in line]
    assert len(rebuilt) == 3 and len(stats.builds) == 3
    assert "gpu_name: 'Fake GPU' -> 'NVIDIA H200'" in rebuilt[0]


def test_an_interrupted_engine_file_is_rebuilt_not_deserialized(model, monkeypatch):
    stats = fake_tensorrt.install(monkeypatch)
    build(model, "--static", "64x64")
    unet_plan = next((model / "tensorrt").glob("unet-*.plan"))
    unet_plan.write_bytes(unet_plan.read_bytes()[:10])
    messages: list[str] = []
    Pipeline.load(model, backend="tensorrt", progress=messages.append)
    assert any("is incomplete" in line for line in messages) and len(stats.builds) == 5


def test_a_new_tensorrt_version_rebuilds(model, monkeypatch):
    fake_tensorrt.install(monkeypatch)
    build(model, "--static", "64x64")
    settings = BuildSettings.load(model)
    manifest = Manifest.load(model)
    from sdrt.runtime.engines.tensorrt.build import component_key

    key = component_key("unet", manifest.components["unet"], settings, replace(DEVICE, tensorrt_version="10.10.1"))
    reason = stale_reason(model, key)
    assert reason is not None and "tensorrt_version: '10.9.0' -> '10.10.1'" in reason
    assert stale_reason(model, component_key("unet", manifest.components["unet"], settings, DEVICE)) is None
    assert plan_path(model, key).parent == model / "tensorrt"


def test_generate_cli_with_the_tensorrt_backend(model, monkeypatch, tmp_path):
    fake_tensorrt.install(monkeypatch)
    build(model, "--static", "64x64")
    out = tmp_path / "cat.png"
    result = CliRunner().invoke(
        main,
        [
            "generate",
            "a cat",
            "--model",
            str(model),
            "--backend",
            "tensorrt",
            "--steps",
            "2",
            "--seed",
            "4",
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    expected = Pipeline.load(model).generate("a cat", steps=2, seed=4).images[0]
    assert np.abs(np.asarray(Image.open(out), np.int16) - np.asarray(expected, np.int16)).max() <= 1


def test_build_then_verify_compares_with_the_cpu_path(model, monkeypatch, tmp_path):
    fake_tensorrt.install(monkeypatch)
    output = build(model, "--static", "64x64", "--verify")
    report = json.loads(output.strip().splitlines()[-1])
    assert report["passed"] and report["backend"] == "tensorrt" and report["finite"]
    assert report["mean_abs"] < 1e-5 and report["settings"]["height"] == 64  # the fake computes in fp32
    assert report["timings"]["tensorrt"]["unet_step_median"] > 0


def test_verify_fails_loudly_when_the_backend_differs(model, monkeypatch):
    from sdrt.runtime.engines.tensorrt import run as tensorrt_backend

    fake_tensorrt.install(monkeypatch)
    build(model, "--static", "64x64")
    real_run = tensorrt_backend.TrtEngine._run

    def drifting(self, feeds, dims):
        outputs = real_run(self, feeds, dims)
        if self.name == "vae_decoder":
            outputs["sample"] = outputs["sample"] + np.float32(0.1)  # about 13/255 brighter
        return outputs

    monkeypatch.setattr(tensorrt_backend.TrtEngine, "_run", drifting)
    result = CliRunner().invoke(main, ["verify", str(model), "--backend", "tensorrt", "--steps", "2"])
    assert result.exit_code == 1 and "differs from the CPU path by" in result.output
