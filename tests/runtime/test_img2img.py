"""Image-to-image against diffusers' StableDiffusionImg2ImgPipeline, and the input-image rule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from conftest import diffusers_pipeline, reference_scheduler
from sdrt.cli import main
from sdrt.errors import SdrtError
from sdrt.runtime.imaging.inputs import to_model_input, to_rgb
from sdrt.runtime.pipeline import Pipeline

MAX_PIXEL_ERROR = 2 / 255
SAMPLERS = ["lms", "euler", "euler_a", "heun", "ddim", "dpmpp_2m", "pndm", "ddpm", "unipc"]


@pytest.fixture(scope="module")
def engine(exported_tiny) -> Path:
    return exported_tiny("standard")


@pytest.fixture(scope="module")
def ours(engine) -> Pipeline:
    return Pipeline.load(engine)


@pytest.fixture(scope="module")
def reference(tiny_models):
    return diffusers_pipeline("StableDiffusionImg2ImgPipeline", tiny_models["standard"])


def photo(width=96, height=64, seed=0) -> Image.Image:
    gradient = np.linspace(0, 255, width)[np.newaxis, :, np.newaxis] * np.ones((height, 1, 3))
    noise = np.random.default_rng(seed).random((height, width, 3)) * 60
    return Image.fromarray(np.clip(gradient * 0.7 + noise, 0, 255).astype(np.uint8))


STRENGTHS = (0.3, 0.75, 1.0)


def _grid() -> list:
    """Every sampler x strength: the default run keeps two strengths per sampler (a different one
    left to the slow tier in turn), so each strength meets six samplers."""
    return [
        pytest.param(sampler, strength, marks=pytest.mark.slow if index % len(STRENGTHS) == position else ())
        for index, sampler in enumerate(sorted(SAMPLERS))
        for position, strength in enumerate(STRENGTHS)
    ]


@pytest.mark.parametrize("sampler, strength", _grid())
def test_img2img_equals_diffusers(ours, reference, tiny_models, sampler, strength):
    config = json.loads((tiny_models["standard"] / "scheduler" / "scheduler_config.json").read_text())
    reference.scheduler = reference_scheduler(sampler, config)
    image = photo()
    result = ours.generate(
        "a photo of a cat",
        init_image=image,
        strength=strength,
        steps=8,
        seed=4,
        sampler=sampler,
        negative_prompt="blurry",
    )
    expected = reference(
        "a photo of a cat",
        image=image,
        strength=strength,
        num_inference_steps=8,
        negative_prompt="blurry",
        output_type="np",
        generator=torch.Generator("cpu").manual_seed(4),
    ).images
    assert result.array.shape == expected.shape == (1, 64, 96, 3)
    assert np.abs(result.array - expected).max() <= MAX_PIXEL_ERROR
    assert result.parameters["strength"] == strength


def test_img2img_batch_of_prompts_equals_diffusers(ours, reference, tiny_models):
    config = json.loads((tiny_models["standard"] / "scheduler" / "scheduler_config.json").read_text())
    reference.scheduler = reference_scheduler("lms", config)
    prompts = ["a photo of a cat", "a watercolor fox"]
    result = ours.generate(prompts, init_image=photo(), strength=0.6, steps=5, seed=8, num_images=2)
    expected = reference(
        prompts,
        image=photo(),
        strength=0.6,
        num_inference_steps=5,
        num_images_per_prompt=2,
        output_type="np",
        generator=torch.Generator("cpu").manual_seed(8),
    ).images
    assert result.array.shape == expected.shape == (4, 64, 96, 3)
    assert np.abs(result.array - expected).max() <= MAX_PIXEL_ERROR


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "I;16", "CMYK", "1"])
def test_every_mode_becomes_rgb(mode):
    base = photo(32, 16)
    if mode == "I;16":
        gray = np.asarray(base.convert("L")).astype(np.uint16) * 257
        image = Image.fromarray(gray)  # uint16 data: mode I;16
        assert image.mode == "I;16"
    else:
        image = base.convert(mode)
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == (32, 16)
    if mode == "I;16":
        np.testing.assert_array_equal(np.asarray(rgb)[..., 0], np.asarray(base.convert("L")))


def test_transparency_is_flattened_onto_white():
    image = Image.new("RGBA", (8, 8), (10, 20, 30, 0))
    assert np.asarray(to_rgb(image)).min() == 255
    half = Image.new("RGBA", (8, 8), (0, 0, 0, 128))
    assert abs(int(np.asarray(to_rgb(half))[0, 0, 0]) - 127) <= 1


def test_size_rule_and_value_range(ours):
    array = to_model_input(photo(100, 70), 64, 96)
    assert array.shape == (1, 3, 64, 96) and array.dtype == np.float32
    assert -1.0 <= array.min() and array.max() <= 1.0
    # Without height/width the image's size is rounded down to the model's multiple (16 here).
    result = ours.generate("a cat", init_image=photo(100, 70), strength=0.5, steps=2, seed=0)
    assert result.images[0].size == (96, 64)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(strength=0.0), r"strength must be in \(0, 1\], got 0.0"),
        (dict(strength=1.5), r"strength must be in \(0, 1\], got 1.5"),
        (dict(strength=0.05, steps=10), "strength 0.05 with 10 steps leaves no denoising step"),
        (dict(init_image="/nonexistent/in.png"), "input image /nonexistent/in.png does not exist"),
        (dict(init_image=photo(8, 8)), "smaller than this model's minimum side 16"),
    ],
)
def test_bad_img2img_requests(ours, settings, message):
    settings = {"init_image": photo(), "steps": 4, **settings}
    with pytest.raises(SdrtError, match=message):
        ours.generate("a cat", seed=0, **settings)


def test_corrupt_image_file(ours, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(SdrtError, match="cannot read .*broken.png as an image"):
        ours.generate("a cat", init_image=broken, steps=2, seed=0)


def test_cli_img2img_writes_denoising_strength(engine, tmp_path):
    source = tmp_path / "in.png"
    photo().save(source)
    out = tmp_path / "out.png"
    result = CliRunner().invoke(
        main,
        [
            "generate",
            "a cat",
            "--model",
            str(engine),
            "--init-image",
            str(source),
            "--strength",
            "0.5",
            "--steps",
            "4",
            "--seed",
            "3",
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    with Image.open(out) as image:
        assert image.size == (96, 64)
        assert image.info["parameters"].endswith(f"Model: {engine.name}, Denoising strength: 0.5")


def test_vae_encoder_loads_only_when_image_to_image_needs_it(engine):
    pipeline = Pipeline.load(engine)
    pipeline.generate("a cat", steps=1, seed=0)
    assert "vae_encoder" not in pipeline.engines
    pipeline.generate("a cat", init_image=photo(), steps=2, seed=0)
    assert "vae_encoder" in pipeline.engines
