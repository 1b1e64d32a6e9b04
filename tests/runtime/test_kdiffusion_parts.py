"""The k-diffusion family's parts against their references, without a model: every sampler's
loop against k_diffusion.sampling with a deterministic stand-in denoiser (A1111's per-image
noise, Brownian trees per seed), every schedule type against A1111's rule (written in
test_kdiffusion.a1111_sigmas), the Brownian tree against torchsde, the Beta quantile against
scipy, and the names: A1111's and ComfyUI's resolve to the same sampler, sdrt's keep theirs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_kdiffusion import A1111_SAMPLERS, SCHEDULES, A1111Noise, a1111_sigmas, run_k_sampler

from sdrt.errors import ConfigError
from sdrt.runtime.imaging.png_info import format_parameters
from sdrt.runtime.rng import GeneratorGroup, TorchGenerator
from sdrt.runtime.schedulers import (
    K_SAMPLER_NAMES,
    SAMPLER_NAMES,
    SAMPLERS,
    k_sampler_name,
    resolve_sampler_name,
    sampler_from_config,
)
from sdrt.runtime.schedulers.kdiffusion.beta_quantile import beta_quantile
from sdrt.runtime.schedulers.kdiffusion.brownian import BrownianTree
from support.kdiffusion_reference import denoiser, k_sampling, lcm_denoiser

# torchsde warns when a float32 sigma lies a rounding past its tree's 1e-6-rounded ends (and clamps it).
pytestmark = pytest.mark.filterwarnings("ignore:Should have:UserWarning")

SHAPE = (4, 8, 8)
SEEDS = [5, 6]
COMFY_NAMES = {
    "euler": "Euler",
    "euler_ancestral": "Euler a",
    "heun": "Heun",
    "dpm_2": "DPM2",
    "dpm_2_ancestral": "DPM2 a",
    "lms": "LMS",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2s_ancestral": "DPM++ 2S a",
    "dpmpp_sde": "DPM++ SDE",
    "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_3m_sde": "DPM++ 3M SDE",
}


@pytest.fixture(scope="module")
def sd15_config(sd15_dir) -> dict:
    return json.loads((sd15_dir / "scheduler" / "scheduler_config.json").read_text())


def stand_in_torch(x, t):
    return torch.sin(0.7 * x + t[:, None, None, None] / 97.0) * 0.9 + 0.05 * x


#: ulps of the output one call of the stand-in model may differ by between torch and NumPy.
STAND_IN_ULPS = 4


def stand_in(x, t):
    return (np.sin(0.7 * x + np.float32(t) / 97.0) * 0.9 + 0.05 * x).astype(np.float32)


@torch.no_grad()
def reference_run(label, config, steps, schedule="automatic"):
    ks = k_sampling()
    function, extra, default, discard, brownian = A1111_SAMPLERS[label]
    model = (lcm_denoiser if label == "LCM" else denoiser)(stand_in_torch, config)
    name = default or "uniform" if schedule == "automatic" else schedule
    sigmas = a1111_sigmas(name, steps + (1 if discard else 0), model)
    if discard:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in SEEDS]
    x = torch.stack([torch.randn(SHAPE, generator=g) for g in generators]) * sigmas[0]
    kwargs = dict(extra)
    if brownian:
        kwargs["noise_sampler"] = ks.BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seed=SEEDS)
    ks.torch = A1111Noise(generators, SHAPE)
    try:
        return run_k_sampler(function, model, model, x, sigmas, steps, **kwargs).numpy(), sigmas.numpy()
    finally:
        ks.torch = torch


def our_run(label, config, steps, schedule="automatic"):
    sampler = sampler_from_config(k_sampler_name(label), config, schedule)
    sampler.set_timesteps(steps)
    generator = GeneratorGroup([TorchGenerator(seed) for seed in SEEDS], 1)
    x = generator.randn((len(SEEDS), *SHAPE)) * np.float32(sampler.init_noise_sigma)
    index = 0
    while index < len(sampler.timesteps):  # DPM adaptive lays out each next call as it runs
        output = stand_in(sampler.scale_model_input(x, index), sampler.timesteps[index])
        x = sampler.step(output, index, x, generator=generator)
        index += 1
    return x, sampler


@pytest.mark.filterwarnings("ignore::UserWarning")  # torchsde's, on float32 ends a little past its interval
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("label", A1111_SAMPLERS)
def test_every_sampler_loop_equals_k_diffusion(sd15_config, label, prediction):
    config = dict(sd15_config, prediction_type=prediction)
    expected, sigmas = reference_run(label, config, 10)
    got, sampler = our_run(label, config, 10)
    np.testing.assert_allclose(sampler.schedule_sigmas, sigmas, rtol=1e-6)
    assert len(sampler.timesteps) > 10 or label != "DPM adaptive"  # its calls laid out as it ran
    # The SDE samplers' trees split at 1e-6-rounded sigmas: a float32 ulp of a schedule level
    # (torch's and NumPy's exp and sqrt differ by one) moves a split, hence their wider bound.
    # DPM fast works on eps = (x - denoised) / sigma, whose float32 rounding grows at small sigma.
    # DPM adaptive takes the general bound below: its calls (about 70 here) each add their rounding.
    # Otherwise the two runs differ only in the stand-in's rounding: torch's and NumPy's float32 sin
    # (vectorised differently per CPU: AVX-512 or AVX2) each round to within a few ulps, taken as
    # STAND_IN_ULPS of the largest value per model call; the solvers carry those errors about
    # linearly, so the bound grows with the number of model calls (two per step for DPM2 a, Heun...).
    calls = len(sampler.timesteps) * sampler.calls_per_step
    rounding = calls * STAND_IN_ULPS * float(np.finfo(np.float32).eps)
    bound = 5e-3 if A1111_SAMPLERS[label][4] else 1e-5 if label == "DPM fast" else rounding
    assert np.abs(got - expected).max() <= bound * np.abs(expected).max()


@pytest.mark.parametrize("schedule", SCHEDULES[1:])
@pytest.mark.parametrize("steps", [1, 4, 11, 30])
def test_every_schedule_equals_a1111s_rule(sd15_config, schedule, steps):
    model = denoiser(stand_in_torch, sd15_config)
    expected = a1111_sigmas(schedule, steps, model).numpy()
    sampler = sampler_from_config("k_euler", sd15_config, schedule)
    sampler.set_timesteps(steps)
    np.testing.assert_allclose(sampler.schedule_sigmas, expected, rtol=2e-6, atol=1e-7)
    # One model call per level but the last, each at the level's fractional timestep.
    np.testing.assert_allclose(sampler.timesteps, model.sigma_to_t(torch.from_numpy(expected[:-1])).numpy(), atol=2e-4)


@pytest.mark.parametrize(
    "label, discards", [("DPM2", True), ("DPM2 a", True), ("DPM++ 3M SDE", True), ("Euler", False)]
)
def test_discard_next_to_last_sigma(sd15_config, label, discards):
    sampler = sampler_from_config(k_sampler_name(label), sd15_config, "karras")
    sampler.set_timesteps(6)
    model = denoiser(stand_in_torch, sd15_config)
    full = a1111_sigmas("karras", 7 if discards else 6, model).numpy()
    expected = np.delete(full, -2) if discards else full
    np.testing.assert_allclose(sampler.schedule_sigmas, expected, rtol=2e-6)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_brownian_tree_equals_torchsde():
    import torchsde

    t0, t1 = float(torch.tensor(0.0292)), float(torch.tensor(14.6146))
    for seed in (0, 1234):
        reference = torchsde.BrownianTree(torch.tensor(t0), torch.zeros(SHAPE), torch.tensor(t1), entropy=seed)
        ours = BrownianTree(SHAPE, t0, t1, seed)
        for low, high in [(10.2, t1), (5.1, 10.2), (1.0, 5.1), (t0, 1.0), (0.3, 0.5), (t0, t1)]:
            low, high = float(torch.tensor(low)), float(torch.tensor(high))
            expected = reference(torch.tensor(low), torch.tensor(high)).numpy()
            np.testing.assert_allclose(ours(low, high), expected, atol=2e-6 * np.abs(expected).max())


def test_beta_quantile_equals_scipy():
    from scipy import stats

    for q in np.linspace(0, 1, 41):
        for a, b in [(0.6, 0.6), (0.5, 0.7), (2.0, 3.0)]:
            assert beta_quantile(q, a, b) == pytest.approx(stats.beta.ppf(q, a, b), abs=1e-12)


def test_a1111_and_comfyui_names_resolve_to_one_sampler():
    for label in A1111_SAMPLERS:
        name = k_sampler_name(label)
        assert SAMPLERS[name].display_name == label
        assert k_sampler_name(f"a1111:{label}") == name
    for comfy, label in COMFY_NAMES.items():
        assert k_sampler_name(comfy) == k_sampler_name(f"comfyui:{comfy}") == k_sampler_name(label)
    assert set(K_SAMPLER_NAMES).isdisjoint(SAMPLER_NAMES)


def test_sdrt_names_keep_their_samplers():
    assert resolve_sampler_name("euler") == "euler" and resolve_sampler_name("dpmpp_2m") == "dpmpp_2m"
    assert resolve_sampler_name("Euler a") == "k_euler_a"
    assert resolve_sampler_name("comfyui:euler") == "comfy_euler"  # ComfyUI's name: ComfyUI's rules
    assert resolve_sampler_name("a1111:euler") == "k_euler"
    with pytest.raises(ConfigError, match="unknown sampler 'Euler b'"):
        resolve_sampler_name("Euler b")
    assert resolve_sampler_name("DPM adaptive") == "k_dpm_ad" and resolve_sampler_name("LCM") == "k_lcm"
    assert resolve_sampler_name("lcm") == "lcm" and resolve_sampler_name("comfyui:lcm") == "comfy_lcm"
    assert resolve_sampler_name("comfyui:dpm_adaptive") == "comfy_dpm_adaptive"
    assert resolve_sampler_name("comfyui:uni_pc") == "comfy_uni_pc"
    for refused in ("euler_cfg_pp", "dpmpp_sde_gpu", "res_multistep", "deis", "sa_solver_pece"):
        with pytest.raises(ConfigError, match=f"ComfyUI's sampler '{refused}' is not run by sdrt: "):
            resolve_sampler_name(f"comfyui:{refused}")


@pytest.mark.parametrize(
    "sampler, schedule, recorded",
    [
        ("k_dpmpp_2m", "automatic", "Schedule type: Karras"),  # A1111's default for DPM++ 2M
        ("k_dpmpp_2m_sde", "automatic", "Schedule type: Exponential"),
        ("k_euler_a", "automatic", None),  # k-diffusion's own get_sigmas: A1111 records none
        ("k_euler_a", "Align Your Steps", "Schedule type: Align Your Steps"),
        ("k_euler", "uniform", "Schedule type: Uniform"),
        ("k_dpm_ad", "automatic", None),
        ("k_lcm", "automatic", None),
        ("k_lcm", "karras", "Schedule type: Karras"),
    ],
)
def test_png_parameters_record_what_a1111_records(sampler, schedule, recorded):
    text = format_parameters(
        "a cat",
        dict(sampler=sampler, schedule=schedule, steps=20, guidance_scale=7, seed=1, width=64, height=64, model="m"),
    )
    assert f"Sampler: {SAMPLERS[sampler].display_name}," in text
    assert (recorded in text) if recorded else ("Schedule type" not in text)


def test_unknown_schedule_is_a_clear_error(sd15_config):
    with pytest.raises(ConfigError, match="unknown schedule type 'sideways'"):
        sampler_from_config("k_euler", sd15_config, "sideways")


@torch.no_grad()
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_dpm_adaptive_rejections_equal_k_diffusion(eta):
    """The adaptive solver's controller, through rejected steps (a first h of 3 is too long), on
    the exact denoiser of unit-Gaussian data, with and without eta's fresh noise."""
    from sdrt.runtime.schedulers.kdiffusion.dpm_adaptive import dpm_adaptive

    ks = k_sampling()
    x = torch.randn((2, *SHAPE), generator=torch.manual_seed(3)) * 14.6
    draws = [torch.randn(x.shape, generator=torch.manual_seed(100 + i)) for i in range(60)]

    def noise_sampler(queue):
        return lambda sigma, sigma_next: queue.pop(0)

    expected, info = ks.sample_dpm_adaptive(
        lambda x, sigma: x / (1 + sigma[:, None, None, None] ** 2),
        x,
        0.0292,
        14.6,
        disable=True,
        h_init=3.0,
        eta=eta,
        noise_sampler=noise_sampler(list(draws)),
        return_info=True,
    )
    assert info["n_reject"] > 0
    queue = [d.numpy() for d in draws]
    run = dpm_adaptive(x.numpy(), None, lambda s, t: queue.pop(0), 0.0292, 14.6, eta=eta, h_init=3.0)
    calls = 0
    try:
        sample, sigma = next(run)
        while True:
            calls += 1
            sample, sigma = run.send((sample / np.float32(1 + sigma**2)).astype(np.float32))
    except StopIteration as done:
        got = done.value
    assert calls == info["nfe"]
    assert np.abs(got - expected.numpy()).max() <= 1e-5 * np.abs(expected.numpy()).max()


@torch.no_grad()
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("levels", [2, 3, 4, 5, 8])
def test_comfyui_uni_pc_equals_its_algorithm(variant, levels):
    """ComfyUI's UniPC (support/comfy_unipc.py) on the exact denoiser of unit-Gaussian data, at
    every order it takes (levels - 2, at most 3; lower first and last), ending at 0 and not."""
    from sdrt.runtime.schedulers.kdiffusion.uni_pc import uni_pc
    from support.comfy_unipc import sample_unipc

    x = torch.randn((2, *SHAPE), generator=torch.manual_seed(4)) * 14.6
    for sigmas in (
        torch.linspace(14.6, 0.03, levels),
        torch.cat([torch.linspace(14.6, 0.03, levels - 1), torch.zeros(1)]),
    ):

        def model(x, sigma):
            return x / (1 + sigma[:, None, None, None] ** 2)

        expected = sample_unipc(model, x, sigmas, variant).numpy()
        other = sample_unipc(model, x, sigmas, "bh2" if variant == "bh1" else "bh1").numpy()
        run = uni_pc(x.numpy(), sigmas.numpy(), None, variant)
        calls = 0
        try:
            sample, sigma = next(run)
            while True:
                calls += 1
                sample, sigma = run.send((sample / np.float32(1 + sigma**2)).astype(np.float32))
        except StopIteration as done:
            got = done.value
        assert calls == levels - 1  # one model call a step: the first at the start, none after the last
        scale = np.abs(expected).max()
        # float32 lambda at the final level 0.001 takes log(1 - exp(2 log alpha)) of ~1e-6: a one-ulp
        # difference between torch's and NumPy's exp there moves the last step (seen: 1.4e-5 relative).
        assert np.abs(got - expected).max() <= 1e-4 * scale, np.abs(got - expected).max() / scale
        if levels > 3:
            assert np.abs(other - expected).max() > 1e-3 * scale, "bh1 and bh2 should differ here"
