"""A1111's SDXL refiner with its k-diffusion samplers: one sampler run, the model swapped for the
refiner before the first model call whose noise level's nearest training timestep t has
(999 - t) / 1000 >= refiner_switch_at (sd_samplers_common.apply_refiner, checked before every
call: a Heun step can switch between its two calls), the sampler's history and noise going on.
The reference is k_diffusion.sampling driving diffusers' tiny SDXL base and refiner UNets with
that rule written here; the refiner's conditioning is A1111's for SDXL refiners (CLIP-G only,
original size, crop (0, 0) and aesthetic score 6 for the prompt, 2.5 for the negative)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from runtime.test_kdiffusion import (
    A1111_SAMPLERS,
    GUIDANCE,
    NEGATIVE,
    PROMPTS,
    SEEDS,
    a1111_sigmas,
    assert_same_image,
    sample_as_a1111,
)
from sdrt.runtime.pipeline import Pipeline
from sdrt.runtime.schedulers import k_sampler_name
from support.kdiffusion_reference import denoiser

STEPS = 6
#: A1111's sdxl_refiner_high_aesthetic_score / sdxl_refiner_low_aesthetic_score defaults.
HIGH_AESTHETIC, LOW_AESTHETIC = 6.0, 2.5
#: A1111's completed ratio: (999 - t) / 1000 for the timestep nearest a call's sigma.
LAST_TIMESTEP, TIMESTEPS = 999, 1000


@pytest.fixture(scope="module")
def pipelines(tiny_sdxl, exported_sdxl):
    from conftest import sdxl_reference

    ours = Pipeline.load(exported_sdxl("base"), refiner=exported_sdxl("refiner"))
    base = sdxl_reference("StableDiffusionXLPipeline", tiny_sdxl["base"])
    refiner = sdxl_reference("StableDiffusionXLImg2ImgPipeline", tiny_sdxl["refiner"])
    return ours, base, refiner


def _model(pipe, time_ids, cond, uncond, pooled, negative_pooled):
    """A1111's CFG denoiser of one SDXL UNet: (x, sigma) -> the guided denoised prediction."""
    added = {"text_embeds": torch.cat([pooled, negative_pooled]), "time_ids": time_ids}

    def model_output(x, t, context):
        return pipe.unet(x, t, encoder_hidden_states=context, added_cond_kwargs=added).sample

    inner = denoiser(model_output, dict(pipe.scheduler.config))

    def cfg(x, sigma):
        c, u = inner(torch.cat([x, x]), torch.cat([sigma, sigma]), context=torch.cat([cond, uncond])).chunk(2)
        return u + (c - u) * GUIDANCE

    return inner, cfg


@torch.no_grad()
def reference_image(base, refiner, label, switch_at, size):
    _, _, default_schedule, discard, _ = A1111_SAMPLERS[label]
    rows = 2 * len(PROMPTS)
    encoded = base.encode_prompt(
        PROMPTS, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True, negative_prompt=NEGATIVE
    )
    base_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32).repeat(rows, 1)
    inner, base_cfg = _model(base, base_ids, *encoded)
    encoded = refiner.encode_prompt(
        PROMPTS, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True, negative_prompt=NEGATIVE
    )
    aesthetic = [HIGH_AESTHETIC] * len(PROMPTS) + [LOW_AESTHETIC] * len(PROMPTS)
    refiner_ids = torch.tensor([[size, size, 0, 0, score] for score in aesthetic], dtype=torch.float32)
    _, refiner_cfg = _model(refiner, refiner_ids, *encoded)
    state = {"refined": False, "calls": 0, "switched_at": None}

    def model(x, sigma, **kwargs):  # CFGDenoiser.forward: apply_refiner before the call
        if not state["refined"]:
            nearest = int(torch.argmin(torch.abs(inner.sigmas - sigma.max())))
            if (LAST_TIMESTEP - nearest) / TIMESTEPS >= switch_at:
                state["refined"], state["switched_at"] = True, state["calls"]
        state["calls"] += 1
        return (refiner_cfg if state["refined"] else base_cfg)(x, sigma)

    name = default_schedule or "uniform"
    sigmas = a1111_sigmas(name, STEPS + (1 if discard else 0), inner)
    if discard:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    latents = sample_as_a1111(label, model, inner, sigmas, STEPS, base.unet.config.in_channels, size)
    image = refiner.vae.decode(latents / refiner.vae.config.scaling_factor).sample
    return (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy(), state["switched_at"]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    "label, switch_at",
    [
        ("DPM++ 2M", 0.6),  # a multistep history carried across the switch
        ("Heun", 0.5),  # two calls a step: the switch lands between them
        pytest.param("Euler a", 0.8, marks=pytest.mark.slow),
        pytest.param("DPM++ 2M SDE", 0.7, marks=pytest.mark.slow),
    ],
)
def test_k_samplers_switch_to_the_refiner_as_a1111(pipelines, label, switch_at):
    ours, base, refiner = pipelines
    size = ours.manifest.native_height
    expected, switched_at = reference_image(base, refiner, label, switch_at, size)
    result = ours.generate(
        PROMPTS,
        negative_prompt=NEGATIVE,
        steps=STEPS,
        seed=SEEDS,
        sampler=k_sampler_name(label),
        guidance_scale=GUIDANCE,
        refiner_switch=switch_at,
    )
    assert 0 < switched_at < STEPS * (2 if label == "Heun" else 1), "the switch must fall inside the run"
    if label == "Heun":
        assert switched_at % 2 == 1, "this case should switch between a Heun step's two calls"
    assert_same_image(result.array, expected)
    plain = dict(negative_prompt=NEGATIVE, steps=STEPS, seed=SEEDS, guidance_scale=GUIDANCE)
    alone = ours.generate(PROMPTS, sampler=k_sampler_name(label), **plain)
    assert np.abs(alone.array - result.array).max() > 0.05, "the refiner must have changed the image"


@pytest.mark.parametrize("label", ["DPM adaptive", "DDIM"])
def test_samplers_without_a1111s_switch_refuse_a_refiner_by_name(pipelines, label):
    """DPM adaptive lays out its calls as it runs; A1111's DDIM, PLMS and UniPC switch by
    timestep, which sdrt does not run: one line naming the sampler."""
    from sdrt.errors import GenerationError

    ours, _, _ = pipelines
    with pytest.raises(GenerationError, match="a refiner runs with A1111's k-diffusion samplers") as error:
        ours.generate(PROMPTS[0], steps=2, seed=1, sampler=k_sampler_name(label), refiner_switch=0.5)
    assert "\n" not in str(error.value) and error.value.param == "sampler"
