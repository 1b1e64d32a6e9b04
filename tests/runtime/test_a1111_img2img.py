"""Image-to-image and inpainting with the k-diffusion samplers against A1111's rules (written
independently of sdrt in support/a1111_img2img.py), through Pipeline.generate and the CLI."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from test_kdiffusion import A1111_SAMPLERS, a1111_sigmas, assert_same_image

from conftest import diffusers_pipeline
from sdrt.runtime.pipeline import Pipeline
from sdrt.runtime.schedulers import k_sampler_name
from support.a1111_img2img import a1111_img2img

pytestmark = pytest.mark.filterwarnings("ignore:Should have:UserWarning")

PROMPTS = ["a photo of a cat", "a red fox in the snow"]
NEGATIVE = ["blurry", ""]
SEEDS = [21, 1000]
GUIDANCE = 7.5
SIZE = 64


def init_image() -> Image.Image:
    """A smooth colour gradient with a bright square (not flat, so the latents carry it)."""
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    pixels = np.stack([x, y, (x + y) / 2], axis=-1) * 200
    pixels[16:40, 20:44] = 240
    return Image.fromarray(pixels.astype(np.uint8))


def mask_image() -> Image.Image:
    """White (repaint) over the right half, with a soft edge the latent mask rounds."""
    values = np.zeros((SIZE, SIZE), np.float32)
    values[:, SIZE // 2 :] = 255
    values[:, SIZE // 2 - 4 : SIZE // 2] = 100
    return Image.fromarray(values.astype(np.uint8), "L")


def reference(
    pipe, label, steps, strength, fix_steps=False, mask=None, prompts=PROMPTS, negatives=NEGATIVE, seeds=SEEDS
):
    function, extra, default_schedule, discard, brownian = A1111_SAMPLERS[label]
    return a1111_img2img(
        pipe,
        init_image(),
        function,
        lambda n, inner: a1111_sigmas(default_schedule or "uniform", n, inner),
        prompts=prompts,
        negatives=negatives,
        seeds=seeds,
        guidance=GUIDANCE,
        steps=steps,
        strength=strength,
        fix_steps=fix_steps,
        mask=mask,
        brownian=brownian,
        extra=extra,
        discard=discard,
    )


@pytest.fixture(scope="module")
def standard(exported_tiny, tiny_models):
    reference_pipe = diffusers_pipeline("StableDiffusionPipeline", tiny_models["standard"])
    return Pipeline.load(exported_tiny("standard")), reference_pipe


def ours(pipeline, label, steps, strength, **fields):
    return pipeline.generate(
        PROMPTS,
        negative_prompt=NEGATIVE,
        steps=steps,
        seeds=SEEDS,
        sampler=k_sampler_name(label),
        guidance_scale=GUIDANCE,
        init_image=init_image(),
        strength=strength,
        **fields,
    )


CASES = [
    ("DPM++ 2M", 4, 0.5, False, False),
    ("Euler a", 4, 0.75, False, True),
    ("DPM++ SDE", 3, 0.6, True, False),
]


@pytest.mark.parametrize("label, steps, strength, fix_steps, masked", CASES)
def test_img2img_equals_a1111(standard, label, steps, strength, fix_steps, masked):
    pipeline, reference_pipe = standard
    mask = mask_image() if masked else None
    expected = reference(reference_pipe, label, steps, strength, fix_steps, mask)
    fields = {"img2img_fix_steps": fix_steps} | ({"mask_image": mask} if masked else {})
    result = ours(pipeline, label, steps, strength, **fields)
    assert_same_image(result.array, expected)
    calls = len(result.timings["unet_steps"])
    kept = steps if fix_steps else int(strength * steps) + 1  # t_enc + 1 levels run
    per_image = 2 * kept - 1 if label == "DPM++ SDE" else kept  # its last step (to sigma 0) calls once
    assert calls == len(SEEDS) * per_image  # one run per image seed
    if masked:  # the kept half is the image's own (through the VAE), the repainted half is not
        left = np.abs(result.array[:, :, :24] - expected[:, :, :24]).max()
        assert left <= 2 / 255


#: A known, explained mismatch: DPM adaptive's step-size controller takes one error over the whole
#: batch, and A1111 runs its batch in one sampler call, while sdrt runs an image-to-image request
#: with one seed per image one image at a time (sdrt.runtime.features.per_image), so each image gets
#: its own step sizes (10-60/255 off). Each image alone equals A1111's
#: (test_dpm_adaptive_img2img_of_one_image_equals_a1111). To fix: run a batch-coupled sampler's
#: images in one run, a generator per image.
IMG2IMG_SAMPLERS = [
    pytest.param(label, marks=pytest.mark.xfail(strict=True, reason="DPM adaptive couples a batch: see above"))
    if label == "DPM adaptive"
    else label
    for label in A1111_SAMPLERS
]


@pytest.mark.slow
@pytest.mark.parametrize("label", IMG2IMG_SAMPLERS)
@pytest.mark.parametrize("masked", [False, True])
def test_every_sampler_img2img_equals_a1111(standard, label, masked):
    pipeline, reference_pipe = standard
    mask = mask_image() if masked else None
    expected = reference(reference_pipe, label, 5, 0.7, False, mask)
    result = ours(pipeline, label, 5, 0.7, **({"mask_image": mask} if masked else {}))
    assert_same_image(result.array, expected)


@pytest.mark.slow  # its own model's export and two pipeline loads: about 10 s
def test_inpainting_unet_equals_a1111(exported_tiny, tiny_models):
    """An inpainting UNet (9 channels): A1111's image conditioning beside the mask blend."""
    pipeline = Pipeline.load(exported_tiny("inpaint"))
    reference_pipe = diffusers_pipeline("StableDiffusionPipeline", tiny_models["inpaint"])
    mask = mask_image()
    expected = reference(reference_pipe, "DPM++ 2M", 4, 0.75, mask=mask)
    assert_same_image(ours(pipeline, "DPM++ 2M", 4, 0.75, mask_image=mask).array, expected)


@pytest.mark.slow
@pytest.mark.parametrize("label", IMG2IMG_SAMPLERS)
def test_every_sampler_img2img_equals_a1111_v_prediction(exported_tiny, tiny_models, label):
    pipeline = Pipeline.load(exported_tiny("v_prediction"))
    reference_pipe = diffusers_pipeline("StableDiffusionPipeline", tiny_models["v_prediction"])
    expected = reference(reference_pipe, label, 5, 0.6, True, mask_image())
    result = ours(pipeline, label, 5, 0.6, img2img_fix_steps=True, mask_image=mask_image())
    assert_same_image(result.array, expected)


def test_fix_steps_runs_every_requested_step(standard):
    pipeline, _ = standard
    result = pipeline.generate(
        "a cat", steps=3, seed=1, sampler="k_euler", init_image=init_image(), strength=0.3, img2img_fix_steps=True
    )
    assert len(result.timings["unet_steps"]) == 3


def test_cli_img2img_with_an_a1111_sampler_equals_a1111(standard, exported_tiny, tmp_path):
    from click.testing import CliRunner

    from sdrt.cli import main

    _, reference_pipe = standard
    source, out = tmp_path / "in.png", tmp_path / "out.png"
    init_image().save(source)
    arguments = ["generate", PROMPTS[0], "--model", str(exported_tiny("standard")), "--steps", "4", "--seed", "21"]
    arguments += ["--sampler", "DPM++ 2M", "--init-image", str(source), "--strength", "0.5"]
    arguments += ["--guidance", str(GUIDANCE), "--out", str(out), "--quiet"]
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 0, result.output
    with Image.open(out) as image:
        got, text = np.asarray(image, np.float64) / 255, image.info["parameters"]
    expected = reference(reference_pipe, "DPM++ 2M", 4, 0.5, prompts=PROMPTS[:1], negatives=[""], seeds=[21])
    difference = np.abs(got - expected[0])
    assert difference.max() <= 2.5 / 255 and difference.mean() <= 0.5 / 255  # + PNG rounding
    assert "Sampler: DPM++ 2M, Schedule type: Karras" in text and "Denoising strength: 0.5" in text


@pytest.mark.slow
@pytest.mark.parametrize("index", [0, 1])
def test_dpm_adaptive_img2img_of_one_image_equals_a1111(standard, index):
    pipeline, reference_pipe = standard
    one = dict(prompts=[PROMPTS[index]], negatives=[NEGATIVE[index]], seeds=[SEEDS[index]])
    expected = reference(reference_pipe, "DPM adaptive", 5, 0.7, **one)
    result = pipeline.generate(
        PROMPTS[index],
        negative_prompt=NEGATIVE[index],
        steps=5,
        seeds=[SEEDS[index]],
        sampler=k_sampler_name("DPM adaptive"),
        guidance_scale=GUIDANCE,
        init_image=init_image(),
        strength=0.7,
    )
    assert_same_image(result.array, expected)
