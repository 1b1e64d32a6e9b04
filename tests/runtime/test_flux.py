"""FLUX.1 on the tiny random models against diffusers' FluxPipeline (CPU generator, fp32).

Tolerance (tests/support/images.py, 2/255 largest and 0.5/255 mean): every engine reproduces
its PyTorch module to a relative 1e-6 or better (the export's validation), and the loop's
arithmetic (packing, the Euler steps, the VAE scaling) is the same float32 operations in the
same order; over a few steps such errors stay near 1e-6 of the pixel range, 3 orders of
magnitude inside one 8-bit level (measured: 4e-4/255 largest).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdrt.errors import GenerationError
from sdrt.runtime.families.flux_latents import image_ids, pack, unpack
from sdrt.runtime.pipeline import Pipeline
from tests.support.images import MAX_PIXEL_ERROR, assert_same_image

NO_HEAVY_IMPORTS = Path(__file__).parent.parent / "no_heavy_imports.py"
PROMPT = "a red fox in a snowy forest at dawn"
SIZE = {"height": 64, "width": 48}
STEPS = 3
DEV_GUIDANCE = 3.5


@pytest.fixture(scope="module")
def dev(exported_flux) -> Pipeline:
    return Pipeline.load(exported_flux("dev"))


@pytest.fixture(scope="module")
def schnell(exported_flux) -> Pipeline:
    return Pipeline.load(exported_flux("schnell"))


def _reference(folder: Path):
    from diffusers import FluxPipeline

    pipeline = FluxPipeline.from_pretrained(folder)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _diffusers_image(folder: Path, ours: Pipeline, seed: int, **settings) -> np.ndarray:
    settings = {"height": SIZE["height"], "width": SIZE["width"], "num_inference_steps": STEPS, **settings}
    return _reference(folder)(
        generator=torch.Generator().manual_seed(seed),
        max_sequence_length=ours.manifest.flux.max_sequence_length,
        output_type="np",
        **settings,
    ).images


def test_packing_and_position_ids_are_diffusers():
    from diffusers import FluxPipeline

    latents = torch.randn(2, 16, 6, 10, generator=torch.Generator().manual_seed(0))
    packed = FluxPipeline._pack_latents(latents, 2, 16, 6, 10).numpy()
    np.testing.assert_array_equal(pack(latents.numpy()), packed)
    np.testing.assert_array_equal(unpack(packed, 6, 10), latents.numpy())
    expected_ids = FluxPipeline._prepare_latent_image_ids(2, 3, 5, "cpu", torch.float32).numpy()
    np.testing.assert_array_equal(image_ids(6, 10), expected_ids)


@pytest.mark.parametrize(
    ("kind", "seed", "settings"),
    [
        ("dev", 1, {"guidance_scale": DEV_GUIDANCE}),
        ("dev", 7, {"guidance_scale": 1.0, "height": 32, "width": 80}),
        ("schnell", 2, {"guidance_scale": 0.0}),
    ],
)
def test_text_to_image_equals_flux_pipeline(kind, seed, settings, tiny_flux, exported_flux, dev, schnell):
    ours = {"dev": dev, "schnell": schnell}[kind]
    size = {**SIZE, **{k: settings[k] for k in ("height", "width") if k in settings}}
    got = ours.generate(PROMPT, steps=STEPS, seed=seed, guidance_scale=settings["guidance_scale"], **size)
    expected = _diffusers_image(tiny_flux[kind], ours, seed, prompt=PROMPT, **settings)
    assert got.parameters["sampler"] == "flow_euler"  # the family's default replaces the diffusion one
    assert_same_image(got.array, expected)


def test_batches_of_prompts_and_images_equal_flux_pipeline(tiny_flux, dev):
    prompts = [PROMPT, "an old lighthouse on a cliff"]
    got = dev.generate(prompts, steps=2, seed=4, guidance_scale=DEV_GUIDANCE, num_images=2, **SIZE)
    expected = _diffusers_image(
        tiny_flux["dev"], dev, 4, prompt=prompts, num_images_per_prompt=2, num_inference_steps=2, guidance_scale=3.5
    )
    assert got.array.shape == expected.shape == (4, SIZE["height"], SIZE["width"], 3)
    for ours, reference in zip(got.array, expected):
        assert_same_image(ours, reference)


def test_true_cfg_with_a_negative_prompt_equals_flux_pipeline(tiny_flux, dev):
    negative = "blurry, low quality"
    got = dev.generate(
        PROMPT, negative_prompt=negative, true_cfg_scale=4.0, steps=STEPS, seed=5, guidance_scale=DEV_GUIDANCE, **SIZE
    )
    expected = _diffusers_image(
        tiny_flux["dev"], dev, 5, prompt=PROMPT, negative_prompt=negative, true_cfg_scale=4.0, guidance_scale=3.5
    )
    assert_same_image(got.array, expected)
    plain = dev.generate(PROMPT, steps=STEPS, seed=5, guidance_scale=DEV_GUIDANCE, **SIZE).array
    assert np.abs(plain - got.array).max() > MAX_PIXEL_ERROR  # true CFG changed the image


@pytest.mark.parametrize(("steps", "strength"), [(3, 0.8), (4, 0.6)])
def test_image_to_image_equals_flux_img2img_pipeline(tiny_flux, dev, steps, strength):
    """3 steps at 0.8 skips none (FLUX rounds the skipped steps down, SD the kept ones)."""
    from diffusers import FluxImg2ImgPipeline

    pixels = np.random.default_rng(0).random((SIZE["height"], SIZE["width"], 3))
    image = Image.fromarray((pixels * 255).astype(np.uint8))
    settings = {"steps": steps, "seed": 3, "guidance_scale": DEV_GUIDANCE, **SIZE}
    got = dev.generate(PROMPT, init_image=image, strength=strength, **settings)
    reference = FluxImg2ImgPipeline.from_pretrained(tiny_flux["dev"])
    reference.set_progress_bar_config(disable=True)
    expected = reference(
        PROMPT,
        image=image,
        strength=strength,
        num_inference_steps=steps,
        guidance_scale=DEV_GUIDANCE,
        generator=torch.Generator().manual_seed(3),
        max_sequence_length=dev.manifest.flux.max_sequence_length,
        output_type="np",
        **SIZE,
    ).images
    assert_same_image(got.array, expected)


@pytest.mark.parametrize(("steps", "strength"), [(3, 0.8), (4, 1.0)])
def test_inpainting_equals_flux_inpaint_pipeline(tiny_flux, dev, steps, strength):
    """The transformer denoises everything; after each step the kept region is the image's
    latents noised to the next step's level (sdrt.runtime.loop.modes.InpaintBlend)."""
    from diffusers import FluxInpaintPipeline

    pixels = np.random.default_rng(1).random((SIZE["height"], SIZE["width"], 3))
    image = Image.fromarray((pixels * 255).astype(np.uint8))
    hole = np.zeros((SIZE["height"], SIZE["width"]), np.uint8)
    hole[16:48, 8:40] = 255
    mask = Image.fromarray(hole)
    settings = {"steps": steps, "seed": 8, "guidance_scale": DEV_GUIDANCE, **SIZE}
    got = dev.generate(PROMPT, init_image=image, mask_image=mask, strength=strength, **settings)
    reference = FluxInpaintPipeline.from_pretrained(tiny_flux["dev"])
    reference.set_progress_bar_config(disable=True)
    expected = reference(
        PROMPT,
        image=image,
        mask_image=mask,
        strength=strength,
        num_inference_steps=steps,
        guidance_scale=DEV_GUIDANCE,
        generator=torch.Generator().manual_seed(8),
        max_sequence_length=dev.manifest.flux.max_sequence_length,
        output_type="np",
        **SIZE,
    ).images
    assert_same_image(got.array, expected)


def test_a_negative_prompt_without_true_cfg_is_ignored_with_a_warning(dev):
    settings = {"steps": 2, "seed": 3, "guidance_scale": DEV_GUIDANCE, **SIZE}
    with_negative = dev.generate(PROMPT, negative_prompt="blurry", **settings)
    assert any("negative prompt only with true CFG" in w for w in with_negative.warnings)
    np.testing.assert_array_equal(with_negative.array, dev.generate(PROMPT, **settings).array)


def test_a_prompt_longer_than_t5s_range_is_cut_with_a_warning(dev):
    long = " ".join([PROMPT] * 200)
    result = dev.generate(long, steps=1, seed=0, **SIZE)
    assert any("T5's" in w and "cut" in w for w in result.warnings)


@pytest.mark.parametrize(
    ("settings", "field", "message"),
    [
        ({"height": 40}, "height", "not a multiple of 16"),
        ({"loras": ["some_sd_lora.safetensors"]}, "loras", "is not a file"),
        ({"true_cfg_scale": float("nan")}, "true_cfg_scale", "finite"),
        ({"sampler": "euler"}, "sampler", "flow"),
    ],
)
def test_bad_requests_are_one_error_naming_the_field(dev, settings, field, message):
    with pytest.raises(GenerationError, match=message) as raised:
        dev.generate(PROMPT, steps=1, seed=0, **{**SIZE, **settings})
    assert raised.value.param == field


def test_sdrt_generate_runs_flux_without_torch_and_equals_diffusers(tiny_flux, exported_flux, dev, tmp_path):
    """No --guidance: FLUX's own default, FluxPipeline's (diffusers is called without one either)."""
    out = tmp_path / "fox.png"
    arguments = [
        "generate", PROMPT, "--model", str(exported_flux("dev")), "--steps", str(STEPS), "--seed", "6",
        "--height", str(SIZE["height"]), "--width", str(SIZE["width"]), "--out", str(out), "--quiet",
    ]  # fmt: skip
    code = f"from sdrt.cli import main\nmain({arguments!r}, standalone_mode=False)\n"
    completed = subprocess.run([sys.executable, str(NO_HEAVY_IMPORTS), code], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    written = np.asarray(Image.open(out).convert("RGB"), dtype=np.float32) / 255
    expected = _diffusers_image(tiny_flux["dev"], dev, 6, prompt=PROMPT)[0]
    assert np.abs(written - expected).max() <= MAX_PIXEL_ERROR + 0.5 / 255  # 8-bit rounding on top
    written_parameters = Image.open(out).info["parameters"]
    assert "CFG scale: 1.0," in written_parameters and "Distilled CFG Scale: 3.5" in written_parameters  # as Forge


def test_sdrt_info_and_tokenize_show_both_tokenizers(exported_flux):
    import json

    from click.testing import CliRunner
    from transformers import CLIPTokenizer, T5TokenizerFast

    from sdrt.cli import main

    folder = exported_flux("dev")
    info = CliRunner().invoke(main, ["info", str(folder)])
    assert info.exit_code == 0 and "FLUX.1: guidance-distilled" in info.output and "511 tokens" in info.output
    text = "a red fox </s> in the snow"
    shown = CliRunner().invoke(main, ["tokenize", text, "--model", str(folder), "--json"])
    assert shown.exit_code == 0, shown.output
    row = json.loads(shown.output)[0]
    assert row["t5"]["input_ids"] == T5TokenizerFast.from_pretrained(folder / "tokenizer_2")(text).input_ids
    assert row["clip"]["input_ids"] == CLIPTokenizer.from_pretrained(folder / "tokenizer")(text).input_ids
