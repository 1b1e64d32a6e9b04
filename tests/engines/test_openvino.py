"""The openvino backend: the same ONNX files compiled by OpenVINO's CPU plugin. Each engine's
outputs against ONNX Runtime's on the same feeds, whole images against diffusers, a LoRA (its
merged weights replace the graph's constants), a folder without a manifest, and its errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import diffusers_pipeline, reference_scheduler
from sdrt.cli import main
from sdrt.errors import ModelFolderError
from sdrt.runtime.engines import openvino as ov_engines
from sdrt.runtime.manifest import Manifest
from sdrt.runtime.pipeline import Pipeline
from support.images import MAX_PIXEL_ERROR, assert_same_image
from support.lora_files import kohya_lora

openvino_module = pytest.importorskip("openvino")

SETTINGS = dict(steps=3, seed=11, height=64, width=64, sampler="euler", guidance_scale=7.5)
PROMPT = "a photo of a cat"
#: float32 engines that compute the same graph in different orders: relative error of a few
#: hundred ulps over the tiny graphs' depth, far above one ulp (1.2e-7) and far below a real fault.
ENGINE_RTOL = 1e-4


@pytest.fixture(scope="module")
def exported(exported_tiny):
    return exported_tiny("standard")


def random_feeds(spec, dims: dict[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    feeds = {}
    for tensor in spec.inputs:
        shape = [size if isinstance(size, int) else dims[size] for size in tensor.shape]
        if tensor.dtype.startswith("int"):
            feeds[tensor.name] = rng.integers(0, 100, shape).astype(tensor.dtype)
        else:
            feeds[tensor.name] = rng.standard_normal(shape).astype(tensor.dtype)
    return feeds


@pytest.mark.parametrize(
    "kind", ["standard", pytest.param("sdxl", marks=pytest.mark.slow), pytest.param("flux", marks=pytest.mark.slow)]
)
def test_every_engine_equals_onnx_runtime(kind, request):
    """Every engine on the same random feeds; OpenVINO compiles each for f32 arithmetic."""
    fixture = {"standard": "exported_tiny", "sdxl": "exported_sdxl", "flux": "exported_flux"}[kind]
    folder = request.getfixturevalue(fixture)()
    cpu, openvino = Pipeline.load(folder, backend="cpu"), Pipeline.load(folder, backend="openvino")
    manifest = Manifest.load(folder)
    dims = {name: dim.opt if dim.opt else dim.min for name, dim in manifest.dims.items()}
    rng = np.random.default_rng(0)
    for name, engine in openvino.engines.items():
        feeds = random_feeds(engine.spec, dims, rng)  # inputs with defaults too: they are inputs here
        want, got = cpu.engines[name].run(feeds), engine.run(feeds)
        for output, value in want.items():
            scale = np.abs(value).max() or 1.0
            assert got[output].dtype == value.dtype
            assert np.abs(got[output] - value).max() <= ENGINE_RTOL * scale, f"{name}.{output}"
        # bf16 on CPUs that have it, unless sdrt says f32
        assert engine.compiled.get_property("INFERENCE_PRECISION_HINT") == openvino_module.Type.f32


@pytest.mark.slow
def test_the_image_equals_diffusers_and_computes_in_f32(exported, tiny_models):
    pipeline = Pipeline.load(exported, backend="openvino")
    reference = diffusers_pipeline("StableDiffusionPipeline", tiny_models["standard"])
    reference.scheduler = reference_scheduler("euler", reference.scheduler.config)
    expected = reference(
        PROMPT,
        num_inference_steps=SETTINGS["steps"],
        guidance_scale=SETTINGS["guidance_scale"],
        height=SETTINGS["height"],
        width=SETTINGS["width"],
        generator=torch.Generator().manual_seed(SETTINGS["seed"]),
        output_type="np",
    ).images
    assert_same_image(pipeline.generate(PROMPT, **SETTINGS).array, expected)


@pytest.mark.slow
def test_a_lora_on_openvino_equals_the_cpu_backend(exported, tiny_models, tmp_path):
    reference = diffusers_pipeline("StableDiffusionPipeline", tiny_models["standard"])
    lora = kohya_lora(reference, tmp_path / "locon.safetensors", seed=5, conv=True)  # linear and conv weights
    on_cpu = Pipeline.load(exported).generate(PROMPT, loras=[f"{lora}:0.8"], **SETTINGS)
    pipeline = Pipeline.load(exported, backend="openvino")
    with_lora = pipeline.generate(PROMPT, loras=[f"{lora}:0.8"], **SETTINGS)
    assert with_lora.warnings == []
    assert_same_image(with_lora.array, on_cpu.array)
    base = pipeline.generate(PROMPT, **SETTINGS).array
    assert np.abs(with_lora.array - base).max() > 10 * MAX_PIXEL_ERROR  # the merged weights were used


@pytest.mark.slow
def test_a_folder_without_a_manifest_is_read_by_openvino(exported, tmp_path):
    folder = tmp_path / "no-manifest"
    shutil.copytree(exported, folder)
    (folder / "manifest.json").unlink()
    got = Pipeline.load(folder, backend="openvino").generate(PROMPT, **SETTINGS).array
    assert_same_image(got, Pipeline.load(exported).generate(PROMPT, **SETTINGS).array)


def test_cli_generate_on_openvino_and_its_one_line_errors(exported, tmp_path, monkeypatch):
    out = tmp_path / "cat.png"
    result = CliRunner().invoke(
        main, ["generate", PROMPT, "--model", str(exported), "--backend", "openvino", "--steps", "2", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 0
    result = CliRunner().invoke(
        main, ["generate", PROMPT, "--model", str(exported), "--backend", "openvino", "--cuda-graph", "--out", str(out)]
    )
    assert result.exit_code != 0 and "CUDA graphs need the cuda backend" in result.output
    assert "Traceback" not in result.output
    monkeypatch.setattr(ov_engines, "_core", None)
    monkeypatch.setitem(__import__("sys").modules, "openvino", None)  # not installed
    with pytest.raises(ModelFolderError, match=r"pip install 'sdrt\[openvino\]'"):
        Pipeline.load(exported, backend="openvino")
