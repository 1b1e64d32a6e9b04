"""A1111's timestep samplers (DDIM with any eta, DDIM CFG++, PLMS, UniPC with its options) against
A1111's rules written independently in support/a1111_timesteps.py, on the tiny SD fixtures:
text-to-image, image-to-image (img2img_fix_steps) and inpainting."""

from __future__ import annotations

import numpy as np
import pytest
from test_a1111_img2img import init_image, mask_image
from test_kdiffusion import assert_same_image

from conftest import diffusers_pipeline
from sdrt.runtime.imaging.png_info import format_parameters
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
    ("DDIM", 4, "standard", 1.0),  # webuiapi's default eta
    ("DDIM CFG++", 3, "standard", None),
    ("PLMS", 4, "v_prediction", None),
    ("UniPC", 4, "standard", None),
]


@pytest.mark.parametrize("label, steps, kind, eta", DEFAULT_CASES)
def test_txt2img_equals_a1111(pipelines, label, steps, kind, eta):
    result = compare(pipelines, label, steps, kind, eta)
    laid_out = len(range(0, 1000, 1000 // steps))
    calls = {"PLMS": laid_out, "UniPC": laid_out}.get(label, laid_out - 1)  # DDIM ends one short of its layout
    assert len(result.timings["unet_steps"]) == calls  # one batch: a generator per image


def test_always_discard_next_to_last_sigma_lays_out_one_step_more(pipelines):
    """A1111's get_timesteps with always_discard_next_to_last_sigma: steps += 1, nothing dropped."""
    ours, reference_pipe = pipelines["standard"]
    expected = a1111_timestep_image(
        reference_pipe, "DDIM", prompts=PROMPTS, negatives=NEGATIVE, seeds=SEEDS, guidance=GUIDANCE, steps=5, eta=0.0
    )
    result = ours.generate(
        PROMPTS,
        negative_prompt=NEGATIVE,
        steps=4,
        seeds=SEEDS,
        sampler=k_sampler_name("DDIM"),
        guidance_scale=GUIDANCE,
        discard_penultimate_sigma=True,
    )
    assert_same_image(result.array, expected)
    assert "Discard penultimate sigma: True" in format_parameters(PROMPTS[0], result.parameters, 1)


def test_img2img_equals_a1111(pipelines):
    compare(pipelines, "UniPC", 4, strength=0.75)  # t_enc 3: UniPC's order 3 in 3 steps


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


def test_eta_ddim_is_recorded_where_a1111_records_it():
    from sdrt.runtime.imaging.png_info import format_parameters

    base = {"seed": 7, "steps": 4, "guidance_scale": 7.5, "width": 64, "height": 64, "model": "m"}
    assert ", Eta DDIM: 1.0" in format_parameters("a cat", {**base, "sampler": "a1111_ddim", "eta": 1.0})
    assert "Eta" not in format_parameters("a cat", {**base, "sampler": "a1111_ddim", "eta": 0.0})  # A1111's default
    assert "Eta" not in format_parameters("a cat", {**base, "sampler": "ddim", "eta": 1.0})  # diffusers' DDIM


@pytest.mark.slow
def test_cli_ddim_with_eta_records_and_regenerates(pipelines, exported_tiny, tmp_path):
    """`--sampler DDIM --eta 1` is A1111's DDIM; its PNG records "Eta DDIM" and regenerates alone."""
    from click.testing import CliRunner
    from PIL import Image

    from sdrt.cli import main

    out, again = tmp_path / "cat.png", tmp_path / "again.png"
    common = ["--model", str(exported_tiny("standard")), "--quiet"]
    arguments = ["generate", "a photo of a cat", *common, "--steps", "4", "--seed", "7"]
    result = CliRunner().invoke(main, [*arguments, "--sampler", "DDIM", "--eta", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    with Image.open(out) as image:
        text, pixels = image.info["parameters"], np.asarray(image)
    assert "Sampler: DDIM, CFG scale" in text and "Eta DDIM: 1.0" in text
    expected = pipelines["standard"][0].generate("a photo of a cat", steps=4, seed=7, sampler="a1111_ddim", eta=1.0)
    assert np.array_equal(pixels, np.asarray(expected.images[0]))
    result = CliRunner().invoke(main, ["generate", *common, "--from-png", str(out), "--out", str(again)])
    assert result.exit_code == 0, result.output
    with Image.open(again) as image:
        assert np.array_equal(np.asarray(image), pixels)


@pytest.mark.slow
def test_webuiapi_default_ddim_runs_on_the_a1111_route(pipelines):
    """webuiapi's txt2img defaults (DDIM at eta 1, batch_size 2) on /sdapi/v1/txt2img: A1111's
    DDIM with seed + i per image (CPU noise here, for the torch reference)."""
    import json

    import httpx

    from sdrt.serve.app import ServeSettings, create_app
    from support.serving import decode_png, live_server

    ours, reference_pipe = pipelines["standard"]
    payload = {"prompt": PROMPTS[0], "steps": 5, "seed": 7, "width": 64, "height": 64, "batch_size": 2}
    payload |= {"sampler_name": "DDIM", "eta": 1.0, "cfg_scale": 7.0, "override_settings": {"randn_source": "CPU"}}
    with live_server(create_app(ours, ServeSettings())) as url:
        response = httpx.post(f"{url}/sdapi/v1/txt2img", json=payload, timeout=120)
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert info["all_seeds"] == [7, 8] and "Eta DDIM: 1.0" in info["infotexts"][1]
    got = np.stack([np.asarray(decode_png(image), np.float64) / 255 for image in response.json()["images"]])
    expected = a1111_timestep_image(
        reference_pipe, "DDIM", prompts=[PROMPTS[0]] * 2, negatives=[""] * 2, seeds=[7, 8], guidance=7.0, steps=5,
        eta=1.0,
    )  # fmt: skip
    assert np.abs(got - expected).max() <= 2 / 255 + 0.5 / 255  # PNG rounding
