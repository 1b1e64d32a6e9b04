"""ComfyUI's KSampler samplers (sdrt's comfy_* samplers) against ComfyUI's rules composed in
tests/support/comfy_reference.py from ComfyUI's sources around the `k-diffusion` package's
samplers and diffusers' tiny UNet: one prompt, a batch of two from one seed (ComfyUI's
prepare_noise), ComfyUI's schedulers, nearest-timestep model calls, CFG and sampler noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import diffusers_pipeline
from sdrt.runtime.pipeline import Pipeline
from sdrt.runtime.schedulers import COMFY_SAMPLERS, COMFY_SCHEDULER_NAMES, SAMPLERS
from sdrt.runtime.schedulers.config import BETA_DEFAULTS, SchedulerConfig
from sdrt.runtime.schedulers.kdiffusion.comfy_schedules import ComfyModelSigmas, KSamplerSteps
from support.comfy_reference import FUNCTIONS, ComfyModelSampling, comfy_ksampler, comfy_scheduler, ksampler_sigmas

pytestmark = pytest.mark.filterwarnings("ignore:Should have:UserWarning")

MAX_PIXEL_ERROR = 2 / 255
MEAN_PIXEL_ERROR = 0.5 / 255
PROMPT, NEGATIVE = "a red fox in the snow", "text, watermark"
SEED = 8566257
BATCH = 2
CFG = 7.5
SIZE = 64


@pytest.fixture(scope="module")
def comfy_reference(tiny_models):
    return {
        kind: diffusers_pipeline("StableDiffusionPipeline", tiny_models[kind]) for kind in ("standard", "v_prediction")
    }


@pytest.fixture(scope="module")
def comfy_ours(exported_tiny):
    return {kind: Pipeline.load(exported_tiny(kind)) for kind in ("standard", "v_prediction")}


@torch.no_grad()
def reference_latents(pipe, sampler, scheduler, steps, latent_image=None, seed=SEED, **cut):
    cond, uncond = pipe.encode_prompt(PROMPT, "cpu", BATCH, True, NEGATIVE)
    s = ComfyModelSampling(dict(pipe.scheduler.config))
    if latent_image is None:
        latent_image = torch.zeros(BATCH, pipe.unet.config.in_channels, SIZE // 8, SIZE // 8)
    return comfy_ksampler(pipe.unet, s, cond, uncond, sampler, scheduler, steps, CFG, seed, latent_image, **cut)


@torch.no_grad()
def decode(pipe, latents) -> np.ndarray:
    image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def assert_same_image(got, expected):
    difference = np.abs(got - expected)
    assert difference.max() <= MAX_PIXEL_ERROR, f"max {difference.max() * 255:.3f}/255"
    assert difference.mean() <= MEAN_PIXEL_ERROR, f"mean {difference.mean() * 255:.3f}/255"
    assert expected.std() > 0.01, "a blank reference image would make the comparison vacuous"
    assert np.abs(expected[0] - expected[1]).max() > 0.01, "the batch's two images should differ"


def compare(ours, reference, sampler, scheduler, steps, kind="standard", **settings):
    pipe = reference[kind]
    expected = decode(pipe, reference_latents(pipe, sampler, scheduler, steps))
    result = ours[kind].generate(
        PROMPT,
        negative_prompt=NEGATIVE,
        num_images=BATCH,
        steps=steps,
        seed=SEED,
        sampler=COMFY_SAMPLERS[sampler],
        schedule=scheduler,
        guidance_scale=CFG,
        height=SIZE,
        width=SIZE,
        **settings,
    )
    assert_same_image(result.array, expected)


DEFAULT_CASES = [
    ("euler", "normal", "standard"),
    ("euler_ancestral", "karras", "standard"),
    ("dpmpp_2m", "karras", "v_prediction"),
    ("dpm_2_ancestral", "normal", "standard"),
    ("dpmpp_sde", "beta", "standard"),
    ("dpmpp_2m_sde_heun", "exponential", "standard"),
    ("lcm", "sgm_uniform", "standard"),
    ("dpm_fast", "kl_optimal", "standard"),
    # ~40 model calls (its step sizes follow the model): the slow grid's, and the solver's own test
    pytest.param("dpm_adaptive", "karras", "standard", marks=pytest.mark.slow),
    ("uni_pc", "normal", "standard"),
    ("uni_pc_bh2", "karras", "v_prediction"),
]


@pytest.mark.parametrize("sampler, scheduler, kind", DEFAULT_CASES)
def test_image_equals_comfyui(comfy_ours, comfy_reference, sampler, scheduler, kind):
    compare(comfy_ours, comfy_reference, sampler, scheduler, 3, kind)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["standard", "v_prediction"])
@pytest.mark.parametrize("scheduler", COMFY_SCHEDULER_NAMES)
@pytest.mark.parametrize("sampler", FUNCTIONS)
def test_every_comfyui_sampler_and_scheduler(comfy_ours, comfy_reference, sampler, scheduler, kind):
    compare(comfy_ours, comfy_reference, sampler, scheduler, 4, kind)


def test_every_comfy_sampler_is_in_the_reference_table():
    assert set(COMFY_SAMPLERS) == set(FUNCTIONS)
    assert all(SAMPLERS[name].family == "comfyui" for name in COMFY_SAMPLERS.values())


@pytest.mark.parametrize("scheduler", COMFY_SCHEDULER_NAMES)
@pytest.mark.parametrize("steps", [1, 4, 9])
def test_schedulers_equal_comfyui(scheduler, steps):
    config = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
    s = ComfyModelSampling(config)
    expected = comfy_scheduler(s, scheduler, steps).numpy()
    from sdrt.runtime.schedulers.kdiffusion.comfy_schedules import COMFY_SCHEDULERS

    model = ComfyModelSigmas(SchedulerConfig.from_dict(config, BETA_DEFAULTS))
    got = COMFY_SCHEDULERS[scheduler](steps, model)
    if scheduler == "kl_optimal" and steps == 1:
        # ComfyUI's kl_optimal divides by steps - 1: one step is NaN there; sdrt runs the one
        # step from the largest level to zero instead.
        assert np.isnan(expected).any()
        np.testing.assert_allclose(got, [expected[0] if np.isfinite(expected[0]) else s.sigma_max, 0.0], rtol=1e-6)
        return
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    "cut",
    [
        dict(denoise=0.6),
        dict(start_step=2, last_step=5),
        dict(last_step=3, force_full=True),
        dict(start_step=1, last_step=30, denoise=0.5),
    ],
)
def test_ksampler_cut_equals_comfyui(cut):
    config = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
    s = ComfyModelSampling(config)
    model = ComfyModelSigmas(SchedulerConfig.from_dict(config, BETA_DEFAULTS))
    from sdrt.runtime.schedulers.kdiffusion.comfy_schedules import comfy_sigmas

    for sampler in ("euler", "dpm_2"):
        expected = ksampler_sigmas(s, sampler, "karras", 8, **cut).numpy()
        steps = KSamplerSteps(
            denoise=cut.get("denoise", 1.0),
            start_step=cut.get("start_step"),
            last_step=cut.get("last_step"),
            force_full_denoise=cut.get("force_full", False),
        )
        discard = sampler == "dpm_2"
        got = steps.cut(8, lambda n, discard=discard: comfy_sigmas("karras", n, model, discard))
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)


def test_nearest_timestep_is_comfyuis():
    config = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
    s = ComfyModelSampling(config)
    model = ComfyModelSigmas(SchedulerConfig.from_dict(config, BETA_DEFAULTS))
    sigmas = np.array([14.6, 7.3, 1.0, 0.5, 0.03, 0.0292], np.float32)
    expected = s.timestep(torch.from_numpy(sigmas)).numpy()
    assert np.array_equal(model.nearest_timestep(sigmas), expected.astype(np.float32))


@pytest.fixture(scope="module")
def sdxl_pair(tiny_sdxl, exported_sdxl):
    """(sdrt's tiny SDXL base, diffusers' pipeline of the same model)."""
    from conftest import sdxl_reference

    return Pipeline.load(exported_sdxl("base")), sdxl_reference("StableDiffusionXLPipeline", tiny_sdxl["base"])


@torch.no_grad()
@pytest.mark.slow  # every ComfyUI sampler x scheduler on SDXL (SD 1.x has the default-run subset)
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("scheduler", COMFY_SCHEDULER_NAMES)
@pytest.mark.parametrize("sampler", FUNCTIONS)
def test_sdxl_image_equals_comfyui(sdxl_pair, sampler, scheduler):
    """SDXL: the UNet also takes the pooled text embedding and the size ids (the image's size,
    crop 0, 0: ComfyUI's SDXL adm for a KSampler's latents)."""
    ours, pipe = sdxl_pair
    size = ours.manifest.native_height
    cond, uncond, pooled, negative_pooled = pipe.encode_prompt(
        PROMPT, device="cpu", num_images_per_prompt=BATCH, do_classifier_free_guidance=True, negative_prompt=NEGATIVE
    )
    time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32).repeat(2 * BATCH, 1)
    added = {"text_embeds": torch.cat([pooled, negative_pooled]), "time_ids": time_ids}

    def unet(x, t, encoder_hidden_states):
        return pipe.unet(x, t, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added)

    s = ComfyModelSampling(dict(pipe.scheduler.config))
    zeros = torch.zeros(BATCH, pipe.unet.config.in_channels, size // 8, size // 8)
    latents = comfy_ksampler(unet, s, cond, uncond, sampler, scheduler, 3, CFG, SEED, zeros)
    expected = decode(pipe, latents)
    result = ours.generate(
        PROMPT,
        negative_prompt=NEGATIVE,
        num_images=BATCH,
        steps=3,
        seed=SEED,
        sampler=COMFY_SAMPLERS[sampler],
        schedule=scheduler,
        guidance_scale=CFG,
    )
    assert_same_image(result.array, expected)
