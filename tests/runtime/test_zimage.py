"""Z-Image on the tiny random model against diffusers' ZImagePipeline, ZImageImg2ImgPipeline and
ZImageInpaintPipeline (CPU generator, fp32): the Qwen3 encoder's hidden_states[-2] at the real tokens, the
transformer's padded token layout, Turbo's scheduler (fixed shift 3), guidance 0 (one batch)
and CFG (c + s (c - u)) with prompt and negative prompt of different lengths, non-square.
Tolerance as tests/runtime/test_flux.py's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sdrt.errors import GenerationError
from sdrt.runtime.families.zimage_tokens import pack, unpack
from sdrt.runtime.imaging.png_info import format_parameters
from sdrt.runtime.pipeline import Pipeline
from tests.support.images import assert_same_image

PROMPT = "a red fox in a snowy forest at dawn"
SIZE = {"height": 64, "width": 48}
STEPS = 2


@pytest.fixture(scope="module")
def zimage(exported_zimage) -> Pipeline:
    return Pipeline.load(exported_zimage)


def _reference(folder: Path, class_name: str = "ZImagePipeline"):
    import diffusers

    pipeline = getattr(diffusers, class_name).from_pretrained(folder)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _diffusers_image(folder: Path, seed: int, class_name: str = "ZImagePipeline", **settings):
    settings = {**SIZE, "num_inference_steps": STEPS, **settings}
    return _reference(folder, class_name)(
        generator=torch.Generator().manual_seed(seed), output_type="np", **settings
    ).images


def test_patches_are_the_transformers():
    """pack is ZImageTransformer2DModel._patchify_image per image; unpack inverts it."""
    from diffusers import ZImageTransformer2DModel

    latents = np.random.default_rng(0).standard_normal((2, 4, 6, 8)).astype(np.float32)
    for row in range(2):
        expected, _, _ = ZImageTransformer2DModel._patchify_image(None, torch.from_numpy(latents[row])[:, None], 2, 1)
        np.testing.assert_array_equal(pack(latents)[row], expected.numpy())
    np.testing.assert_array_equal(unpack(pack(latents), 6, 8), latents)


@pytest.mark.parametrize(
    ("seed", "settings"),
    [(1, {"guidance_scale": 0.0}), (2, {"guidance_scale": 3.0, "negative_prompt": "blurry, low quality, watermark"})],
)
def test_text_to_image_equals_zimage_pipeline(tiny_zimage, zimage, seed, settings):
    got = zimage.generate(PROMPT, steps=STEPS, seed=seed, **SIZE, **settings)
    expected = _diffusers_image(tiny_zimage, seed, prompt=PROMPT, **settings)
    assert expected.std() > 0.01
    assert_same_image(got.array, expected)


def test_two_images_per_prompt_share_calls_and_equal_the_pipeline(tiny_zimage, zimage):
    """Rows of one caption length run in one transformer call (batch 2 per half), as wide as 80."""
    size = {"height": 48, "width": 80}
    settings = {"guidance_scale": 2.0, "negative_prompt": "blurry"}
    got = zimage.generate(PROMPT, steps=STEPS, seed=9, num_images=2, **size, **settings)
    expected = _diffusers_image(tiny_zimage, 9, prompt=PROMPT, num_images_per_prompt=2, **size, **settings)
    assert_same_image(got.array, expected)


def test_cfg_truncation_and_normalization_equal_the_pipelines(tiny_zimage, zimage):
    """Three steps at normalized times 0, 0.14, 0.4 (Turbo's shift 3): truncation 0.2 drops CFG
    on the last; normalization 0.9 caps the guided norm (either alone changes the image)."""
    settings = {"guidance_scale": 4.0, "negative_prompt": "blurry", "steps": 3, "seed": 7, **SIZE}
    plain = zimage.generate(PROMPT, **settings).array
    for options in ({"cfg_truncation": 0.2}, {"cfg_normalization": 0.9}):
        got = zimage.generate(PROMPT, **settings, **options)
        text = format_parameters(PROMPT, got.parameters)
        assert f"CFG {next(iter(options)).split('_')[1]}: {next(iter(options.values()))}" in text
        expected = _diffusers_image(
            tiny_zimage, 7, prompt=PROMPT, negative_prompt="blurry", guidance_scale=4.0, num_inference_steps=3,
            **options,
        )  # fmt: skip
        assert_same_image(got.array, expected)
        assert np.abs(got.array - plain).max() > 4 / 255  # the option matters


def test_default_guidance_is_the_pipelines_with_an_empty_negative(tiny_zimage, zimage):
    got = zimage.generate(PROMPT, steps=STEPS, seed=3, guidance_scale=zimage.family.default_guidance, **SIZE)
    assert_same_image(got.array, _diffusers_image(tiny_zimage, 3, prompt=PROMPT))


def test_image_to_image_equals_zimage_img2img_pipeline(tiny_zimage, zimage):
    from PIL import Image

    pixels = np.random.default_rng(0).random((SIZE["height"], SIZE["width"], 3))
    image = Image.fromarray((pixels * 255).astype(np.uint8))
    got = zimage.generate(PROMPT, init_image=image, strength=0.6, steps=4, seed=4, guidance_scale=0.0, **SIZE)
    expected = _diffusers_image(
        tiny_zimage, 4, "ZImageImg2ImgPipeline", prompt=PROMPT, image=image, strength=0.6,
        num_inference_steps=4, guidance_scale=0.0,
    )  # fmt: skip
    assert_same_image(got.array, expected)


def test_inpainting_equals_zimage_inpaint_pipeline(tiny_zimage, zimage):
    """FLUX's blend (sdrt.runtime.loop.modes.InpaintBlend), with CFG: ZImageInpaintPipeline's."""
    from PIL import Image

    pixels = np.random.default_rng(1).random((SIZE["height"], SIZE["width"], 3))
    image = Image.fromarray((pixels * 255).astype(np.uint8))
    hole = np.zeros((SIZE["height"], SIZE["width"]), np.uint8)
    hole[16:48, 8:40] = 255
    mask = Image.fromarray(hole)
    settings = {"strength": 0.8, "guidance_scale": 2.0}
    got = zimage.generate(PROMPT, init_image=image, mask_image=mask, steps=3, seed=8, **SIZE, **settings)
    expected = _diffusers_image(
        tiny_zimage, 8, "ZImageInpaintPipeline", prompt=PROMPT, image=image, mask_image=mask, num_inference_steps=3,
        **settings,
    )  # fmt: skip
    assert_same_image(got.array, expected)


def test_a_prompt_past_512_tokens_is_cut_as_diffusers_cuts_it_with_a_warning(tiny_zimage, zimage):
    long = "a red fox in a snowy forest at dawn, " * 60
    small = {"height": 32, "width": 32}
    got = zimage.generate(long, steps=1, seed=5, guidance_scale=0.0, **small)
    assert any("longer than Qwen's 512 tokens" in warning for warning in got.warnings)
    expected = _diffusers_image(tiny_zimage, 5, prompt=long, num_inference_steps=1, guidance_scale=0.0, **small)
    assert_same_image(got.array, expected)


def test_bad_requests_are_one_error_naming_the_field(zimage):
    with pytest.raises(GenerationError) as error:
        zimage.generate(PROMPT, steps=1, seed=0, height=56, width=48)  # not a multiple of 16
    assert error.value.param == "height"
    with pytest.raises(GenerationError) as error:
        zimage.generate(PROMPT, steps=1, seed=0, true_cfg_scale=2.0, **SIZE)
    assert error.value.param == "true_cfg_scale"
    with pytest.raises(GenerationError) as error:
        zimage.generate(PROMPT, steps=1, seed=0, cfg_normalization=-1.0, **SIZE)
    assert error.value.param == "cfg_normalization"
    unguided = zimage.generate(PROMPT, steps=1, seed=0, guidance_scale=0.0, cfg_truncation=0.5, **SIZE)
    assert any("cfg_truncation only with guidance scale > 0" in warning for warning in unguided.warnings)


def test_sdrt_info_tokenize_and_a_bad_size(exported_zimage, tmp_path):
    import json

    from click.testing import CliRunner
    from transformers import AutoTokenizer

    from sdrt.cli import main

    info = CliRunner().invoke(main, ["info", str(exported_zimage)])
    assert info.exit_code == 0, info.output
    assert "Z-Image: no guidance input; Qwen3 fp32, 512 tokens" in info.output
    shown = CliRunner().invoke(main, ["tokenize", PROMPT, "--model", str(exported_zimage), "--json"])
    assert shown.exit_code == 0, shown.output
    tokenizer = AutoTokenizer.from_pretrained(str(exported_zimage / "tokenizer"))
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True, enable_thinking=True
    )
    assert json.loads(shown.output)[0]["qwen"]["input_ids"] == tokenizer(chat).input_ids
    model, out = str(exported_zimage), str(tmp_path / "x.png")
    bad = CliRunner().invoke(main, ["generate", PROMPT, "--model", model, "--height", "56", "--out", out])
    assert bad.exit_code != 0 and "height" in bad.output and len(bad.output.strip().splitlines()) == 1
