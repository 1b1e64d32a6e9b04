"""Chroma on the tiny random model against diffusers' ChromaPipeline (CPU generator, fp32):
T5 with its attention mask, the transformer's text mask (real tokens and the first padding
token), real CFG with a negative prompt. Tolerance as tests/runtime/test_flux.py's."""

from __future__ import annotations

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
