"""A1111's hires fix against diffusers doing the same three things: StableDiffusionPipeline to
latents, torch's interpolate of them (or a PIL resize of the decoded picture), and
StableDiffusionImg2ImgPipeline from there with the same seed. Also the latent resampling modes
against torch.nn.functional.interpolate directly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import diffusers_pipeline, reference_scheduler
from sdrt.runtime.features.hires import HiresFix
from sdrt.runtime.imaging.resample import LATENT_MODES, resize_latents
from sdrt.runtime.pipeline import Pipeline
from support.images import assert_same_image

PROMPT = "a photo of a cat"
TORCH_MODES = {
    "nearest": dict(mode="nearest"),
    "nearest-exact": dict(mode="nearest-exact"),
    "bilinear": dict(mode="bilinear", align_corners=False),
    "bilinear-antialias": dict(mode="bilinear", align_corners=False, antialias=True),
    "bicubic": dict(mode="bicubic", align_corners=False),
    "bicubic-antialias": dict(mode="bicubic", align_corners=False, antialias=True),
}
#: float32 separable resampling: a few ulps of the inputs' magnitude.
RESAMPLE_TOLERANCE = 1e-5


@pytest.mark.parametrize("mode", LATENT_MODES)
@pytest.mark.parametrize("size", [(16, 24), (13, 19), (5, 7)])
def test_latent_resampling_equals_torch_interpolate(mode, size):
    latents = np.random.default_rng(0).standard_normal((2, 4, 8, 12)).astype(np.float32)
    expected = torch.nn.functional.interpolate(torch.from_numpy(latents), size=size, **TORCH_MODES[mode]).numpy()
    np.testing.assert_allclose(resize_latents(latents, *size, mode), expected, atol=RESAMPLE_TOLERANCE, rtol=0)


@pytest.fixture(scope="module")
def ours(exported_tiny) -> Pipeline:
    return Pipeline.load(exported_tiny("standard"))


@pytest.fixture(scope="module")
def references(tiny_models):
    folder = tiny_models["standard"]
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    text = diffusers_pipeline("StableDiffusionPipeline", folder)
    image = diffusers_pipeline("StableDiffusionImg2ImgPipeline", folder)
    text.scheduler = reference_scheduler("euler", config)
    image.scheduler = reference_scheduler("euler", config)
    return text, image


@pytest.mark.parametrize(
    "upscaler, mode", [("Latent", "bilinear"), ("Latent (nearest-exact)", "nearest-exact"), ("Lanczos", None)]
)
def test_hires_fix_equals_diffusers_composed(ours, references, upscaler, mode):
    from PIL import Image

    text, image = references
    hires = HiresFix(scale=1.5, upscaler=upscaler, steps=4, strength=0.6)
    result = ours.generate(
        PROMPT, steps=3, seed=11, sampler="euler", height=64, width=64, negative_prompt="blurry", hires=hires
    )
    generator = torch.Generator("cpu").manual_seed(11)
    common = dict(negative_prompt="blurry", guidance_scale=7.5)
    if mode is not None:
        latents = text(
            PROMPT, num_inference_steps=3, height=64, width=64, output_type="latent", generator=generator, **common
        ).images
        upscaled = torch.nn.functional.interpolate(latents, size=(12, 12), **TORCH_MODES[mode])
    else:
        picture = text(PROMPT, num_inference_steps=3, height=64, width=64, generator=generator, **common).images[0]
        upscaled = picture.resize((96, 96), resample=Image.LANCZOS)
    expected = image(
        PROMPT,
        image=upscaled,
        strength=0.6,
        num_inference_steps=4,
        output_type="np",
        generator=torch.Generator("cpu").manual_seed(11),
        **common,
    ).images
    assert result.array.shape == expected.shape == (1, 96, 96, 3)
    assert_same_image(result.array, expected)
    assert result.parameters["width"] == 64 and result.parameters["hires"]["width"] == 96


def test_hires_fix_from_the_cli_and_both_apis(ours, exported_tiny, tmp_path):
    from click.testing import CliRunner

    from sdrt.cli import main
    from sdrt.runtime.imaging.png_info import read_parameters

    out = tmp_path / "hires.png"
    run = CliRunner().invoke(
        main,
        [
            "generate",
            PROMPT,
            "--model",
            str(exported_tiny("standard")),
            "--steps",
            "2",
            "--seed",
            "3",
            "--sampler",
            "euler",
            "--hires",
            "2",
            "--hires-steps",
            "2",
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert run.exit_code == 0, run.output
    expected = ours.generate(PROMPT, steps=2, seed=3, sampler="euler", hires=HiresFix(scale=2, steps=2))
    from PIL import Image

    with Image.open(out) as picture:
        np.testing.assert_array_equal(np.asarray(picture), np.asarray(expected.images[0]))
    text = read_parameters(out)
    assert "Size: 64x64" in text and "Hires upscale: 2" in text and "Hires upscaler: Latent" in text
    bad = CliRunner().invoke(
        main,
        [
            "generate",
            PROMPT,
            "--model",
            str(exported_tiny("standard")),
            "--steps",
            "1",
            "--hires",
            "2",
            "--hires-upscaler",
            "R-ESRGAN 4x+",
            "--quiet",
        ],
    )
    assert bad.exit_code != 0 and "Traceback" not in bad.output and "hires upscaler" in bad.output
    from sdrt.serve.app import ServeSettings, create_app
    from support.serving import decode_png, live_server

    hires = HiresFix(scale=1.5, upscaler="Latent (bicubic)", steps=2, strength=0.5)
    expected = ours.generate(PROMPT, steps=2, seed=6, sampler="euler", guidance_scale=7.0, hires=hires)
    with live_server(create_app(ours, ServeSettings(randn_source="CPU"))) as url:
        import httpx

        a1111 = httpx.post(
            f"{url}/sdapi/v1/txt2img",
            timeout=60,
            json={
                "prompt": PROMPT,
                "steps": 2,
                "seed": 6,
                "sampler_name": "euler",  # sdrt's own name: the diffusers-equal Euler (A1111's "Euler" is k_euler)
                "cfg_scale": 7.0,
                "enable_hr": True,
                "hr_scale": 1.5,
                "hr_upscaler": "Latent (bicubic)",
                "hr_second_pass_steps": 2,
                "denoising_strength": 0.5,
                "hr_sampler_name": "Use same sampler",
            },
        ).json()
        openai = httpx.post(
            f"{url}/v1/images/generations",
            timeout=60,
            json={
                "prompt": PROMPT,
                "steps": 2,
                "seed": 6,
                "sampler": "euler",
                "guidance_scale": 7.0,
                "hires": {"scale": 1.5, "upscaler": "Latent (bicubic)", "steps": 2, "strength": 0.5},
            },
        ).json()
    for data in (a1111["images"][0], openai["data"][0]["b64_json"]):
        np.testing.assert_array_equal(np.asarray(decode_png(data)), np.asarray(expected.images[0]))
    info = json.loads(a1111["info"])
    assert info["enable_hr"] and info["hr_width"] == 96 and info["width"] == 64
