"""Chroma on the tiny random model against diffusers' ChromaPipeline (CPU generator, fp32):
T5 with its attention mask, the transformer's text mask (real tokens and the first padding
token), real CFG with a negative prompt. Tolerance as tests/runtime/test_flux.py's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sdrt.errors import GenerationError
from sdrt.runtime.pipeline import Pipeline
from sdrt.runtime.text.chroma_encoders import token_masks
from tests.support.images import assert_same_image

PROMPT = "a red fox in a snowy forest at dawn"
SIZE = {"height": 64, "width": 48}
STEPS = 2


@pytest.fixture(scope="module")
def chroma(exported_chroma) -> Pipeline:
    return Pipeline.load(exported_chroma)


def _reference(folder: Path, class_name: str = "ChromaPipeline"):
    import diffusers

    pipeline = getattr(diffusers, class_name).from_pretrained(folder)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _diffusers_image(folder: Path, ours: Pipeline, seed: int, class_name: str = "ChromaPipeline", **settings):
    settings = {**SIZE, "num_inference_steps": STEPS, **settings}
    return _reference(folder, class_name)(
        generator=torch.Generator().manual_seed(seed),
        max_sequence_length=ours.manifest.flux.max_sequence_length,
        output_type="np",
        **settings,
    ).images


def test_masks_are_chroma_pipelines(tiny_chroma):
    """The tokenizer's mask and the transformer's (one padding token more) as diffusers computes them."""
    reference = _reference(tiny_chroma)
    prompts = ["a fox", "a red fox in a snowy forest at dawn, highly detailed"]
    length = 16
    _, expected = reference._get_t5_prompt_embeds(prompts, max_sequence_length=length)
    tokenizer_mask = reference.tokenizer(prompts, padding="max_length", max_length=length, truncation=True)
    lengths = [sum(row) for row in tokenizer_mask.attention_mask]
    tokens, visible = token_masks(lengths, length)
    np.testing.assert_array_equal(tokens, np.asarray(tokenizer_mask.attention_mask))
    np.testing.assert_array_equal(visible, expected.numpy())


@pytest.mark.parametrize(
    ("seed", "settings"),
    [(1, {"guidance_scale": 4.0, "negative_prompt": "blurry, low quality"}), (2, {"guidance_scale": 1.0})],
)
def test_text_to_image_equals_chroma_pipeline(tiny_chroma, chroma, seed, settings):
    got = chroma.generate(PROMPT, steps=STEPS, seed=seed, **SIZE, **settings)
    expected = _diffusers_image(tiny_chroma, chroma, seed, prompt=PROMPT, **settings)
    assert_same_image(got.array, expected)


def test_default_guidance_is_chroma_pipelines_with_an_empty_negative(tiny_chroma, chroma):
    got = chroma.generate(PROMPT, steps=STEPS, seed=3, guidance_scale=chroma.family.default_guidance, **SIZE)
    assert_same_image(got.array, _diffusers_image(tiny_chroma, chroma, 3, prompt=PROMPT))


def test_bad_requests_are_one_error_naming_the_field(chroma):
    with pytest.raises(GenerationError) as error:
        chroma.generate(PROMPT, steps=1, seed=0, height=60, width=48)
    assert error.value.param == "height"
    with pytest.raises(GenerationError) as error:
        chroma.generate(PROMPT, steps=1, seed=0, true_cfg_scale=2.0, **SIZE)
    assert error.value.param == "true_cfg_scale"


def test_image_to_image_equals_chroma_img2img_pipeline(tiny_chroma, chroma):
    from PIL import Image

    pixels = np.random.default_rng(0).random((SIZE["height"], SIZE["width"], 3))
    image = Image.fromarray((pixels * 255).astype(np.uint8))
    settings = {"guidance_scale": 3.0, "negative_prompt": "blurry"}
    got = chroma.generate(PROMPT, init_image=image, strength=0.6, steps=4, seed=4, **SIZE, **settings)
    expected = _diffusers_image(
        tiny_chroma, chroma, 4, "ChromaImg2ImgPipeline", prompt=PROMPT, image=image, strength=0.6,
        num_inference_steps=4, **settings,
    )  # fmt: skip
    assert_same_image(got.array, expected)


def test_inpainting_equals_chroma_inpaint_pipeline(tiny_chroma, chroma):
    """FLUX.1's blend: the kept region is the image's latents noised to the next step's level."""
    from PIL import Image

    pixels = np.random.default_rng(1).random((SIZE["height"], SIZE["width"], 3))
    image = Image.fromarray((pixels * 255).astype(np.uint8))
    hole = np.zeros((SIZE["height"], SIZE["width"]), np.uint8)
    hole[16:48, 8:40] = 255
    mask = Image.fromarray(hole)
    settings = {"guidance_scale": 3.0, "negative_prompt": "blurry"}
    got = chroma.generate(PROMPT, init_image=image, mask_image=mask, strength=0.8, steps=3, seed=8, **SIZE, **settings)
    reference = _reference(tiny_chroma, "ChromaInpaintPipeline")
    # diffusers 0.42's ChromaInpaintPipeline reads transformer.config.guidance_embeds, which
    # Chroma's transformer config lacks (it has no guidance input): say so, as it means.
    reference.transformer.register_to_config(guidance_embeds=False)
    expected = reference(
        PROMPT, image=image, mask_image=mask, strength=0.8, num_inference_steps=3,
        generator=torch.Generator().manual_seed(8), max_sequence_length=chroma.manifest.flux.max_sequence_length,
        output_type="np", **SIZE, **settings,
    ).images  # fmt: skip
    assert expected.std() > 0.01
    assert_same_image(got.array, expected)
    # The kept region differs from a plain image-to-image run's: the mask is used.
    plain = chroma.generate(PROMPT, init_image=image, strength=0.8, steps=3, seed=8, **SIZE, **settings)
    assert np.abs(plain.array - got.array)[:8].max() > 0.02


def test_sdrt_info_shows_chroma(exported_chroma):
    from click.testing import CliRunner

    from sdrt.cli import main

    info = CliRunner().invoke(main, ["info", str(exported_chroma)])
    assert info.exit_code == 0, info.output
    assert "Chroma: no guidance input; T5 fp32" in info.output
    shown = CliRunner().invoke(main, ["tokenize", PROMPT, "--model", str(exported_chroma), "--json"])
    assert shown.exit_code == 0, shown.output
    from transformers import T5TokenizerFast

    expected = T5TokenizerFast.from_pretrained(exported_chroma / "tokenizer")(PROMPT).input_ids
    assert json.loads(shown.output)[0]["t5"]["input_ids"] == expected
