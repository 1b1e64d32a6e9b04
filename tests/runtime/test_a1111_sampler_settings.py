"""A1111's sampler settings (sdrt.runtime.sampler_settings) against the `k-diffusion` package
driven as A1111 drives it. The rules are written here from A1111's sources, independently of
sdrt's: KDiffusionSampler.sample (SGM noise multiplier), Sampler.initialize (eta, s_churn,
s_tmin, s_tmax, s_noise, for the functions sampler_extra_params lists) and get_sigmas (the
schedule's sigma range, rho, the old Karras range, the Beta distribution)."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
from test_kdiffusion import (
    A1111_SAMPLERS,
    GUIDANCE,
    NEGATIVE,
    PROMPTS,
    SEEDS,
    A1111Noise,
    assert_same_image,
    run_k_sampler,
)

from conftest import diffusers_pipeline
from sdrt.runtime.imaging.png_info import format_parameters, parse_parameters
from sdrt.runtime.pipeline import Pipeline
from sdrt.runtime.sampler_settings import SETTING_LABELS, SamplerSettings
from sdrt.runtime.schedulers import k_sampler_name
from support.kdiffusion_reference import denoiser, k_sampling

pytestmark = pytest.mark.filterwarnings("ignore:Should have:UserWarning")

#: A1111's option defaults (modules/shared_options.py).
A1111_OPTS = {
    "sgm_noise_multiplier": False,
    "eta_ancestral": 1.0,
    "s_churn": 0.0,
    "s_tmin": 0.0,
    "s_tmax": 0.0,
    "s_noise": 1.0,
    "sigma_min": 0.0,
    "sigma_max": 0.0,
    "rho": 0.0,
    "use_old_karras_scheduler_sigmas": False,
    "beta_dist_alpha": 0.6,
    "beta_dist_beta": 0.6,
}
#: sd_samplers_kdiffusion.sampler_extra_params: the functions given churn and s_noise.
EXTRA_PARAMS = {
    "sample_euler": ("s_churn", "s_tmin", "s_tmax", "s_noise"),
    "sample_heun": ("s_churn", "s_tmin", "s_tmax", "s_noise"),
    "sample_dpm_2": ("s_churn", "s_tmin", "s_tmax", "s_noise"),
    "sample_dpm_fast": ("s_noise",),
    "sample_dpm_2_ancestral": ("s_noise",),
    "sample_dpmpp_2s_ancestral": ("s_noise",),
    "sample_dpmpp_sde": ("s_noise",),
    "sample_dpmpp_2m_sde": ("s_noise",),
    "sample_dpmpp_3m_sde": ("s_noise",),
}
#: sd_schedulers.schedulers' default_rho (-1: none).
DEFAULT_RHO = {"karras": 7.0, "polyexponential": 1.0}


@pytest.fixture(scope="module")
def kd_reference(tiny_models):
    return {kind: diffusers_pipeline("StableDiffusionPipeline", tiny_models[kind]) for kind in ("standard",)}


@pytest.fixture(scope="module")
def kd_ours(exported_tiny):
    return {kind: Pipeline.load(exported_tiny(kind)) for kind in ("standard",)}


def schedule_sigmas(name, n, sigma_min, sigma_max, rho, opts, inner):
    """The schedule functions of A1111's sd_schedulers table these tests use, with its kwargs."""
    ks = k_sampling()
    if name == "karras":
        return ks.get_sigmas_karras(n, sigma_min, sigma_max, **({"rho": rho} if rho else {}))
    if name == "polyexponential":
        return ks.get_sigmas_polyexponential(n, sigma_min, sigma_max, **({"rho": rho} if rho else {}))
    if name == "exponential":
        return ks.get_sigmas_exponential(n, sigma_min, sigma_max)
    if name == "sgm_uniform":
        start, end = inner.sigma_to_t(torch.tensor(sigma_max)), inner.sigma_to_t(torch.tensor(sigma_min))
        return torch.FloatTensor([inner.t_to_sigma(t) for t in torch.linspace(start, end, n + 1)[:-1]] + [0.0])
    if name == "beta":
        from scipy import stats

        ts = [stats.beta.ppf(x, opts["beta_dist_alpha"], opts["beta_dist_beta"]) for x in 1 - np.linspace(0, 1, n)]
        return torch.FloatTensor([sigma_min + x * (sigma_max - sigma_min) for x in ts] + [0.0])
    raise AssertionError(name)


def a1111_get_sigmas(label, schedule, steps, opts, inner):
    """KDiffusionSampler.get_sigmas with A1111's options `opts`: (sigmas, extra_generation_params)."""
    _, _, default_schedule, discard, _ = A1111_SAMPLERS[label]
    n = steps + (1 if discard else 0)
    recorded = {}
    name = default_schedule if schedule == "automatic" else schedule
    if name is None or name == "uniform":
        sigmas = inner.get_sigmas(n)
    else:
        m_min, m_max = inner.sigmas[0].item(), inner.sigmas[-1].item()
        sigma_min, sigma_max = (0.1, 10) if opts["use_old_karras_scheduler_sigmas"] else (m_min, m_max)
        if opts["sigma_min"] != 0 and opts["sigma_min"] != m_min:
            sigma_min = opts["sigma_min"]
            recorded["Schedule min sigma"] = opts["sigma_min"]
        if opts["sigma_max"] != 0 and opts["sigma_max"] != m_max:
            sigma_max = opts["sigma_max"]
            recorded["Schedule max sigma"] = opts["sigma_max"]
        rho = None
        if name in DEFAULT_RHO and opts["rho"] != 0 and opts["rho"] != DEFAULT_RHO[name]:
            rho = opts["rho"]
            recorded["Schedule rho"] = opts["rho"]
        if name == "beta":
            recorded["Beta schedule alpha"] = opts["beta_dist_alpha"]
            recorded["Beta schedule beta"] = opts["beta_dist_beta"]
        sigmas = schedule_sigmas(name, n, sigma_min, sigma_max, rho, opts, inner)
    if discard:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas, recorded


def a1111_initialize(function, opts):
    """Sampler.initialize's keyword arguments and extra_generation_params for `function`."""
    ks = k_sampling()
    signature = inspect.signature(getattr(ks, function)).parameters
    kwargs, recorded = {}, {}
    if "eta" in signature:
        if opts["eta_ancestral"] != 1.0:
            recorded["Eta"] = opts["eta_ancestral"]
        kwargs["eta"] = opts["eta_ancestral"]
    extra = EXTRA_PARAMS.get(function, ())
    defaults = {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": math.inf, "s_noise": 1.0}
    values = {**{k: opts[k] for k in ("s_churn", "s_tmin", "s_noise")}, "s_tmax": opts["s_tmax"] or math.inf}
    labels = {"s_churn": "Sigma churn", "s_tmin": "Sigma tmin", "s_tmax": "Sigma tmax", "s_noise": "Sigma noise"}
    for name in extra:
        if values[name] != defaults[name]:
            kwargs[name] = values[name]
            recorded[labels[name]] = values[name]
    return kwargs, recorded


@torch.no_grad()
def reference(pipe, label, schedule, steps, size=64, **changes):
    """A1111's txt2img with options `changes`: (image, its extra_generation_params)."""
    opts = {**A1111_OPTS, **changes}
    ks = k_sampling()
    function, extra, _, _, brownian = A1111_SAMPLERS[label]
    cond, uncond = pipe.encode_prompt(PROMPTS, "cpu", 1, True, NEGATIVE)
    unet = pipe.unet
    inner = denoiser(
        lambda x, t, context: unet(x, t, encoder_hidden_states=context).sample, dict(pipe.scheduler.config)
    )

    def cfg(x, sigma):
        both = inner(torch.cat([x, x]), torch.cat([sigma, sigma]), context=torch.cat([cond, uncond]))
        c, u = both.chunk(2)
        return u + (c - u) * GUIDANCE

    sigmas, recorded = a1111_get_sigmas(label, schedule, steps, opts, inner)
    shape = (unet.config.in_channels, size // 8, size // 8)
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in SEEDS]
    x = torch.stack([torch.randn(shape, generator=g) for g in generators])
    if opts["sgm_noise_multiplier"]:
        recorded["SGM noise multiplier"] = True
        x = x * torch.sqrt(1.0 + sigmas[0] ** 2.0)
    else:
        x = x * sigmas[0]
    kwargs, initialized = a1111_initialize(function, opts)
    recorded.update(initialized)
    kwargs = {**extra, **kwargs}
    if brownian:
        sigma_min, sigma_max = sigmas[sigmas > 0].min(), sigmas.max()
        kwargs["noise_sampler"] = ks.BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=SEEDS)
    ks.torch = A1111Noise(generators, shape)
    try:
        latents = run_k_sampler(function, cfg, inner, x, sigmas, steps, **kwargs)
    finally:
        ks.torch = torch
    image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy(), recorded


def compare_settings(kd_ours, kd_reference, label, schedule, steps, kind="standard", **changes):
    """sdrt's image and recorded fields with SamplerSettings(**changes) against A1111's."""
    expected, recorded = reference(kd_reference[kind], label, schedule, steps, **changes)
    result = kd_ours[kind].generate(
        PROMPTS,
        negative_prompt=NEGATIVE,
        steps=steps,
        seed=SEEDS,
        sampler=k_sampler_name(label),
        schedule=schedule,
        guidance_scale=GUIDANCE,
        sampler_settings=SamplerSettings(**changes),
    )
    assert_same_image(result.array, expected)
    fields = parse_parameters(format_parameters(PROMPTS[0], result.parameters, 1))
    # A1111 writes each as f"{label}: {value}" (create_infotext), so str(value) is its text.
    assert {key: fields.get(key) for key in recorded} == {key: str(value) for key, value in recorded.items()}
    unexpected = {key for key in fields if key in SETTING_LABELS and key not in recorded}
    assert not unexpected, f"recorded where A1111 does not: {unexpected}"
    return result


#: float32 products of the same float32 numbers (sdrt's randn is torch's, bit for bit): a few ulps.
FLOAT32_PRODUCT_RTOL = 4 * 2**-24


@pytest.mark.parametrize("sgm", [True, False])
def test_sgm_noise_multiplier_scales_the_txt2img_noise_as_a1111(kd_ours, kd_reference, sgm):
    """KDiffusionSampler.sample: x * sqrt(1 + sigmas[0]^2) with the option, x * sigmas[0] without
    (at sigma0 ~14.6 the two differ by 0.23%, which a few steps' image hardly shows: checked on the
    start itself). Only sample() reads it: an image's run (sample_img2img) records nothing."""
    from sdrt.runtime.loop.modes import text_to_image
    from sdrt.runtime.request import GenerationRequest
    from sdrt.runtime.rng import TorchGenerator
    from sdrt.runtime.schedulers.kdiffusion.a1111_settings import settings_parameters

    pipeline = kd_ours["standard"]
    settings = SamplerSettings(sgm_noise_multiplier=sgm)
    request = GenerationRequest(
        "a cat", steps=3, sampler="k_euler", schedule="karras", seed=5, sampler_settings=settings
    )
    resolved = request.resolve(pipeline.manifest)
    shape = (1, 4, 8, 8)
    start = text_to_image(resolved, pipeline.new_sampler(request, resolved), TorchGenerator(5), shape).latents

    inner = denoiser(None, dict(kd_reference["standard"].scheduler.config))
    sigmas, _ = a1111_get_sigmas("Euler", "karras", 3, A1111_OPTS, inner)
    noise = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(5))
    expected = noise * (torch.sqrt(1.0 + sigmas[0] ** 2.0) if sgm else sigmas[0])
    assert np.allclose(start, expected.numpy(), rtol=FLOAT32_PRODUCT_RTOL, atol=0)
    config = pipeline.scheduler_config
    assert settings_parameters(request, config, from_image=False) == (
        {"a1111_settings": {"SGM noise multiplier": True}} if sgm else {}
    )
    assert settings_parameters(request, config, from_image=True) == {}


# Euler's Karras levels for 4 steps are 14.6, 3.17, 0.447, 0.029: the churn window [1, 5] takes
# only 3.17, so dropping any of s_churn, s_tmin, s_tmax or s_noise changes the image.
CHURN = {"s_churn": 2.0, "s_tmin": 1.0, "s_tmax": 5.0, "s_noise": 0.8}
SETTINGS_CASES = [
    pytest.param("Euler", "karras", 4, CHURN, id="euler-churn"),
    pytest.param("Euler a", "automatic", 3, {"eta_ancestral": 0.5}, id="euler_a-eta"),
    pytest.param("DPM2 a", "automatic", 3, {"eta_ancestral": 0.6, "s_noise": 0.7}, id="dpm2_a-eta-noise"),
    # Its 3 exponential steps are long (h ~3): eta hardly shows there, the Brownian noise's scale does.
    pytest.param("DPM++ 2M SDE", "automatic", 3, {"s_noise": 0.7}, id="2m_sde-noise"),
    # A1111 passes Euler a neither churn nor s_noise (sampler_extra_params): nothing changes or is recorded.
    pytest.param("Euler a", "automatic", 3, {"s_noise": 0.5, "s_churn": 3.0}, id="euler_a-ignores"),
]


@pytest.mark.parametrize("label, schedule, steps, changes", SETTINGS_CASES)
def test_eta_and_churn_settings_equal_a1111(kd_ours, kd_reference, label, schedule, steps, changes):
    compare_settings(kd_ours, kd_reference, label, schedule, steps, **changes)


SCHEDULE_CASES = [
    # Karras's three: a range of 0.1 to 5 (the model's 0.029 to 14.6) and rho 2.5 (its own 7: the middle
    # level 1.42 instead of 0.93).
    pytest.param("Euler", "karras", 3, {"sigma_min": 0.1, "sigma_max": 5.0, "rho": 2.5}, id="karras-range-rho"),
    # At sigma0 = 1, sqrt(1 + sigma0^2) = 1.41 x sigma0: the SGM multiplier shows in the image.
    pytest.param("Euler", "karras", 3, {"sgm_noise_multiplier": True, "sigma_max": 1.0}, id="sgm-small-sigma0"),
    # DPM++ 2M's Automatic is Karras (A1111's table), so the old range 0.1 to 10 applies, unrecorded.
    pytest.param("DPM++ 2M", "automatic", 3, {"use_old_karras_scheduler_sigmas": True}, id="old-karras"),
    pytest.param("Euler", "polyexponential", 3, {"rho": 2.0, "sigma_max": 8.0}, id="polyexponential-rho"),
    # Exponential has no rho: neither applied nor recorded.
    pytest.param("Euler", "exponential", 3, {"rho": 3.0, "sigma_min": 0.2}, id="exponential-no-rho"),
    pytest.param("Heun", "sgm_uniform", 2, {"sigma_max": 6.0}, id="sgm_uniform-range"),
    pytest.param("Euler", "beta", 3, {"beta_dist_alpha": 0.3, "beta_dist_beta": 0.9}, id="beta-alpha-beta"),
    # Euler's Automatic is no schedule function (model_wrap.get_sigmas): the range is neither applied nor recorded.
    pytest.param("Euler", "automatic", 3, {"sigma_max": 5.0, "rho": 3.0}, id="automatic-uniform-ignores"),
]


@pytest.mark.parametrize("label, schedule, steps, changes", SCHEDULE_CASES)
def test_schedule_settings_equal_a1111(kd_ours, kd_reference, label, schedule, steps, changes):
    compare_settings(kd_ours, kd_reference, label, schedule, steps, **changes)


def test_beta_schedule_records_its_defaults_as_a1111():
    """get_sigmas records the Beta schedule's alpha and beta whatever they are."""
    from sdrt.runtime.request import GenerationRequest
    from sdrt.runtime.schedulers.kdiffusion.a1111_settings import settings_parameters

    config = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000}
    request = GenerationRequest("a cat", steps=3, sampler="k_euler", schedule="beta")
    fields = settings_parameters(request, config, from_image=False)["a1111_settings"]
    assert fields == {"Beta schedule alpha": 0.6, "Beta schedule beta": 0.6}
    assert settings_parameters(GenerationRequest("a cat", sampler="k_euler"), config, from_image=False) == {}


def test_hires_keeps_the_first_passs_sgm_noise_multiplier_field(kd_ours):
    """A1111's hires fix: the first pass (sample) records SGM noise multiplier, the second
    (sample_img2img) adds its own fields; the image's parameters keep both."""
    from sdrt.runtime.features.hires import HiresFix

    settings = SamplerSettings(sgm_noise_multiplier=True, s_churn=1.0)
    result = kd_ours["standard"].generate(
        PROMPTS[0], steps=2, seed=3, sampler="k_euler", height=64, width=64, sampler_settings=settings,
        hires=HiresFix(scale=1.5, upscaler="Latent", steps=2, strength=0.6),
    )  # fmt: skip
    fields = parse_parameters(format_parameters(PROMPTS[0], result.parameters))
    assert fields["SGM noise multiplier"] == "True" and fields["Sigma churn"] == "1.0"
