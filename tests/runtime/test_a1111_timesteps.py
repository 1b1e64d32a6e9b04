"""A1111's timestep samplers (DDIM with any eta, DDIM CFG++, PLMS, UniPC with its options) against
A1111's rules written independently in support/a1111_timesteps.py, on the tiny SD fixtures:
text-to-image, image-to-image (img2img_fix_steps) and inpainting."""

from __future__ import annotations

import pytest
from test_a1111_img2img import init_image, mask_image
from test_kdiffusion import assert_same_image

from conftest import diffusers_pipeline
from sdrt.runtime.pipeline import Pipeline
from sdrt.runtime.schedulers import K_SAMPLER_NAMES, SAMPLERS, k_sampler_name, resolve_sampler_name
from sdrt.runtime.schedulers.a1111_timesteps import A1111TimestepSampler
from support.a1111_timesteps import a1111_timestep_image

PROMPTS = ["a photo of a cat", "a red fox in the snow"]
NEGATIVE = ["blurry", ""]
SEEDS = [21, 1000]
GUIDANCE = 7.5
LABELS = ["DDIM", "DDIM CFG++", "PLMS", "UniPC"]


@pytest.fixture(scope="module")
def pipelines(exported_tiny, tiny_models):
    kinds = ("standard", "v_prediction")
    return {
        kind: (Pipeline.load(exported_tiny(kind)), diffusers_pipeline("StableDiffusionPipeline", tiny_models[kind]))
        for kind in kinds
    }


def compare(pipelines, label, steps, kind="standard", eta=None, strength=None, fix_steps=False, masked=False):
    ours, reference_pipe = pipelines[kind]
    image = None if strength is None else init_image()
    mask = mask_image() if masked else None
    expected = a1111_timestep_image(
        reference_pipe,
        label,
        prompts=PROMPTS,
        negatives=NEGATIVE,
        seeds=SEEDS,
        guidance=GUIDANCE,
        steps=steps,
        eta=eta or 0.0,
        image=image,
        strength=strength,
        fix_steps=fix_steps,
        mask=mask,
    )
    fields = {} if image is None else {"init_image": image, "strength": strength, "img2img_fix_steps": fix_steps}
    if mask is not None:
        fields["mask_image"] = mask
    if eta is not None:
        fields["eta"] = eta
    result = ours.generate(
        PROMPTS,
        negative_prompt=NEGATIVE,
        steps=steps,
        seeds=SEEDS,
        sampler=k_sampler_name(label),
        guidance_scale=GUIDANCE,
        **fields,
    )
    assert_same_image(result.array, expected)
    return result


DEFAULT_CASES = [
    ("DDIM", 5, "standard", 1.0),  # webuiapi's default eta
    ("DDIM CFG++", 4, "standard", None),
    ("PLMS", 6, "v_prediction", None),
    ("UniPC", 5, "standard", None),
]


@pytest.mark.parametrize("label, steps, kind, eta", DEFAULT_CASES)
def test_txt2img_equals_a1111(pipelines, label, steps, kind, eta):
    result = compare(pipelines, label, steps, kind, eta)
    laid_out = len(range(0, 1000, 1000 // steps))
    calls = {"PLMS": laid_out, "UniPC": laid_out}.get(label, laid_out - 1)  # DDIM ends one short of its layout
    assert len(result.timings["unet_steps"]) == calls  # one batch: a generator per image


def test_img2img_equals_a1111(pipelines):
    compare(pipelines, "UniPC", 6, strength=0.7)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["standard", "v_prediction"])
@pytest.mark.parametrize("steps", [3, 7])
@pytest.mark.parametrize("label, eta", [("DDIM", None), ("DDIM", 0.5), ("DDIM CFG++", 1.0), ("PLMS", None)])
def test_every_timestep_sampler_equals_a1111(pipelines, label, eta, steps, kind):
    compare(pipelines, label, steps, kind, eta)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["standard", "v_prediction"])
@pytest.mark.parametrize("steps", [3, 8])
def test_unipc_equals_a1111(pipelines, steps, kind):
    compare(pipelines, "UniPC", steps, kind)


@pytest.mark.slow
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("fix_steps", [False, True])
@pytest.mark.parametrize("label", LABELS)
def test_every_timestep_sampler_img2img_equals_a1111(pipelines, label, fix_steps, masked):
    compare(pipelines, label, 6, eta=1.0 if label == "DDIM" else None, strength=0.6, fix_steps=fix_steps, masked=masked)


def test_names_resolve_to_a1111s_samplers():
    for label in LABELS:
        entry = SAMPLERS[k_sampler_name(label)]
        assert entry.display_name == label and issubclass(entry.cls, A1111TimestepSampler)
        assert entry.name in K_SAMPLER_NAMES
    assert resolve_sampler_name("ddim") == "ddim"  # sdrt's own name stays diffusers' DDIM
    assert resolve_sampler_name("DDIM") == resolve_sampler_name("a1111:DDIM") == "a1111_ddim"


def test_cfgpp_without_guidance_is_refused_by_field(pipelines):
    from sdrt.errors import GenerationError

    with pytest.raises(GenerationError, match="classifier-free guidance") as caught:
        pipelines["standard"][0].generate("a cat", steps=3, seed=1, sampler="a1111_ddim_cfgpp", guidance_scale=1.0)
    assert caught.value.param == "guidance_scale"


def test_unipc_order_above_the_steps_is_refused(pipelines):
    from sdrt.errors import GenerationError

    with pytest.raises(GenerationError, match="UniPC order"):
        pipelines["standard"][0].generate("a cat", steps=2, seed=1, sampler="a1111_unipc")
