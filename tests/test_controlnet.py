"""ControlNet against diffusers' ControlNet pipelines on tiny random models: one and two
ControlNets, scales, guidance windows, guess mode, image-to-image, inpainting and SDXL; the
preprocessors against OpenCV; the CLI; bad inputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image, ImageDraw

from conftest import reference_scheduler, sdxl_reference
from sdrt.cli import main
from sdrt.errors import GenerationError
from sdrt.export.exporter import export_model
from sdrt.export.random_model import TINY_CONDITIONING_EMBEDDING, save_random_controlnet
from sdrt.runtime.controlnet.units import ControlUnit
from sdrt.runtime.pipeline import Pipeline

MAX_PIXEL_ERROR = 2 / 255
MEAN_PIXEL_ERROR = 0.5 / 255
SAMPLER = "euler"
SETTINGS = dict(steps=5, seed=7, height=64, width=64, sampler=SAMPLER, guidance_scale=7.5)
PROMPT = "a photo of a cat"
NO_HEAVY_IMPORTS = Path(__file__).parent / "no_heavy_imports.py"


def assert_same_image(got: np.ndarray, expected: np.ndarray) -> None:
    difference = np.abs(got - expected)
    assert difference.max() <= MAX_PIXEL_ERROR, f"max {difference.max() * 255:.3f}/255"
    assert difference.mean() <= MEAN_PIXEL_ERROR, f"mean {difference.mean() * 255:.3f}/255"


def shapes_image(seed: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    """A control map like a real one: a few filled shapes on black."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = sorted(rng.integers(0, size[0], 2)), sorted(rng.integers(0, size[1], 2))
        draw.ellipse([x[0], y[0], x[1] + 4, y[1] + 4], fill=tuple(int(v) for v in rng.integers(64, 256, 3)))
    return image


@pytest.fixture(scope="module")
def source(tiny_models):
    return tiny_models["standard"]


@pytest.fixture(scope="module")
def controlnets(source, tmp_path_factory) -> dict[str, Path]:
    """Two tiny random ControlNets for the tiny SD model: diffusers folders and exports."""
    root = tmp_path_factory.mktemp("controlnets")
    found = {}
    for name, seed in (("edges", 1), ("depth", 2)):
        folder = save_random_controlnet(root / "diffusers" / name, source, seed=seed,
                                        conditioning_embedding=TINY_CONDITIONING_EMBEDDING)
        export_model(str(folder), root / "exported" / name, progress=lambda line: None)
        found[name] = folder
    return found


@pytest.fixture(scope="module")
def exported_controlnets(controlnets) -> Path:
    return next(iter(controlnets.values())).parent.parent / "exported"


@pytest.fixture(scope="module")
def pipeline(exported_tiny, exported_controlnets):
    return Pipeline.load(exported_tiny("standard"), controlnet_dir=exported_controlnets)


def reference(class_name: str, source: Path, controlnets: list[Path]):
    from diffusers import ControlNetModel

    import diffusers

    models = [ControlNetModel.from_pretrained(path) for path in controlnets]
    pipeline = getattr(diffusers, class_name).from_pretrained(
        source, controlnet=models[0] if len(models) == 1 else models, safety_checker=None,
        requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    pipeline.scheduler = reference_scheduler(SAMPLER, pipeline.scheduler.config)
    return pipeline


def run_reference(pipeline, **settings) -> np.ndarray:
    return pipeline(PROMPT, num_inference_steps=SETTINGS["steps"], guidance_scale=SETTINGS["guidance_scale"],
                    generator=torch.Generator().manual_seed(SETTINGS["seed"]), output_type="np", **settings).images


def test_one_controlnet_at_half_scale_equals_diffusers(pipeline, source, controlnets):
    image = shapes_image(1)
    expected = run_reference(reference("StableDiffusionControlNetPipeline", source, [controlnets["edges"]]),
                             image=image, controlnet_conditioning_scale=0.5)
    got = pipeline.generate(PROMPT, controlnets=[ControlUnit("edges", image, 0.5)], **SETTINGS)
    assert_same_image(got.array, expected)
    plain = pipeline.generate(PROMPT, **SETTINGS).array
    assert np.abs(plain - got.array).max() > 10 * MAX_PIXEL_ERROR  # the ControlNet did something


def test_two_controlnets_with_guidance_windows_equal_diffusers(pipeline, source, controlnets):
    images = [shapes_image(1), shapes_image(2)]
    expected = run_reference(reference("StableDiffusionControlNetPipeline", source,
                                       [controlnets["edges"], controlnets["depth"]]),
                             image=images, controlnet_conditioning_scale=[0.5, 0.8],
                             control_guidance_start=[0.2, 0.0], control_guidance_end=[0.8, 1.0])
    units = [ControlUnit("edges", images[0], 0.5, start=0.2, end=0.8), ControlUnit("depth", images[1], 0.8)]
    assert_same_image(pipeline.generate(PROMPT, controlnets=units, **SETTINGS).array, expected)


def test_guess_mode_equals_diffusers(pipeline, source, controlnets):
    image = shapes_image(3)
    expected = run_reference(reference("StableDiffusionControlNetPipeline", source, [controlnets["edges"]]),
                             image=image, guess_mode=True)
    got = pipeline.generate(PROMPT, controlnets=[ControlUnit("edges", image, mode="ControlNet is more important")],
                            **SETTINGS)
    assert_same_image(got.array, expected)


def test_prompt_mode_without_guidance_equals_diffusers_guess_mode(pipeline, source, controlnets):
    """"My prompt is more important" weights residuals as guess mode does, on both halves: with
    no unconditional half the two are the same computation."""
    image = shapes_image(4)
    model = reference("StableDiffusionControlNetPipeline", source, [controlnets["edges"]])
    expected = model(PROMPT, image=image, num_inference_steps=SETTINGS["steps"], guidance_scale=1.0, guess_mode=True,
                     generator=torch.Generator().manual_seed(SETTINGS["seed"]), output_type="np").images
    got = pipeline.generate(PROMPT, controlnets=[ControlUnit("edges", image, mode="prompt")],
                            **{**SETTINGS, "guidance_scale": 1.0})
    assert_same_image(got.array, expected)


def test_image_to_image_with_a_controlnet_equals_diffusers(pipeline, source, controlnets):
    init, control = shapes_image(5), shapes_image(6)
    expected = run_reference(reference("StableDiffusionControlNetImg2ImgPipeline", source, [controlnets["depth"]]),
                             image=init, control_image=control, strength=0.6, controlnet_conditioning_scale=0.8)
    settings = {k: v for k, v in SETTINGS.items() if k not in ("height", "width")}
    got = pipeline.generate(PROMPT, init_image=init, strength=0.6, controlnets=[ControlUnit("depth", control, 0.8)],
                            **settings)
    assert_same_image(got.array, expected)


def test_a_control_image_of_another_size_is_resized_with_a_warning(pipeline, source, controlnets):
    image = shapes_image(7, (96, 80))
    expected = run_reference(reference("StableDiffusionControlNetPipeline", source, [controlnets["edges"]]),
                             image=image, height=64, width=64)
    got = pipeline.generate(PROMPT, controlnets=[ControlUnit("edges", image)], **SETTINGS)
    assert_same_image(got.array, expected)
    assert any("96x80" in warning and "resized to 64x64" in warning for warning in got.warnings), got.warnings
