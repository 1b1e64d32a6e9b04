"""Every sdrt sampler against its diffusers class: whole denoising loops with a deterministic
stand-in model, the same noise for ancestral samplers (from the seeded generator)."""

from __future__ import annotations

import inspect
import json

import diffusers
import numpy as np
import pytest
import torch

from conftest import reference_scheduler
from sdrt.errors import ConfigError
from sdrt.runtime.rng import TorchGenerator
from sdrt.runtime.schedulers import SAMPLER_NAMES, SAMPLERS, SCHEDULES, sampler_from_config
from support.numerics import assert_within_loop_bound

SAMPLE_SHAPE = (2, 4, 8, 12)
NAMES = SAMPLER_NAMES
STEP_COUNTS = [1, 2, 3, 10, 25, 50]


@pytest.fixture(scope="module")
def sd15_config(sd15_dir) -> dict:
    return json.loads((sd15_dir / "scheduler" / "scheduler_config.json").read_text())


def stand_in_model(model_input: np.ndarray, timestep: float) -> np.ndarray:
    return (np.sin(0.7 * model_input + timestep / 97.0) * 0.9 + 0.05 * model_input).astype(np.float32)


def run_both(
    name: str,
    config: dict,
    steps: int,
    seed: int = 3,
    last_step_x0: bool = False,
    schedule: str = "automatic",
    eta: float = 0.0,
):
    """Both samplers through a whole loop from the same seed: (reference result, ours, the
    reference scheduler, ours, the reference's largest |sample| before each call and at the
    end). With `last_step_x0`, the reference's last step is replaced by its data prediction
    (diffusers' convert_model_output) from that step's model output."""
    reference = reference_scheduler(name, {**config, **SCHEDULES[schedule].overrides})
    ours = sampler_from_config(name, config, schedule)
    if eta:
        ours.eta = eta
    reference.set_timesteps(steps)
    ours.set_timesteps(steps)
    torch_generator = torch.Generator("cpu").manual_seed(seed)
    our_generator = TorchGenerator(seed)
    ref_sample = torch.randn(SAMPLE_SHAPE, generator=torch_generator) * reference.init_noise_sigma
    our_sample = our_generator.randn(SAMPLE_SHAPE) * np.float32(ours.init_noise_sigma)
    takes_generator = "generator" in inspect.signature(reference.step).parameters
    # diffusers' pipelines pass eta (default 0.0) to every scheduler whose step takes one (DDIM, TCD).
    takes_eta = "eta" in inspect.signature(reference.step).parameters
    magnitudes = []
    for index, timestep in enumerate(reference.timesteps):
        magnitudes.append(float(ref_sample.abs().max()))
        ref_input = reference.scale_model_input(ref_sample, timestep).numpy()
        extra = {"generator": torch_generator} if takes_generator else {}
        extra.update({"eta": eta} if takes_eta else {})
        ref_output = torch.from_numpy(stand_in_model(ref_input, float(timestep)))
        if last_step_x0 and index == len(reference.timesteps) - 1:
            ref_sample = reference.convert_model_output(ref_output, sample=ref_sample)
        else:
            ref_sample = reference.step(ref_output, timestep, ref_sample, **extra).prev_sample
        our_input = ours.scale_model_input(our_sample, index)
        our_sample = ours.step(
            stand_in_model(our_input, float(ours.timesteps[index])), index, our_sample, generator=our_generator
        )
    magnitudes.append(float(ref_sample.abs().max()))
    return ref_sample.numpy(), our_sample, reference, ours, magnitudes


def relative_error(got, expected) -> float:
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def test_every_sampler_names_a_diffusers_class():
    for name in NAMES:
        assert hasattr(diffusers, SAMPLERS[name].reference_name), name


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", STEP_COUNTS)
@pytest.mark.parametrize("name", NAMES)
def test_loop_matches_reference(sd15_config, name, steps, prediction):
    config = dict(sd15_config, prediction_type=prediction)
    ref_final, our_final, reference, ours, magnitudes = run_both(name, config, steps)
    np.testing.assert_allclose(
        np.asarray(ours.timesteps, dtype=np.float64), reference.timesteps.numpy().astype(np.float64), rtol=1e-6
    )
    assert ours.init_noise_sigma == pytest.approx(float(reference.init_noise_sigma), rel=1e-6)
    assert_within_loop_bound(our_final, ref_final, magnitudes)


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("name", NAMES)
def test_timestep_spacings(sd15_config, name, spacing):
    ref_final, our_final, _, _, magnitudes = run_both(name, dict(sd15_config, timestep_spacing=spacing), 20)
    assert_within_loop_bound(our_final, ref_final, magnitudes)


# Zero terminal SNR is for v-prediction models (an epsilon model divides by alpha_bar = 0).
# Not listed: DPM++ with cosine betas and Karras sigmas, where diffusers 0.42 itself fails
# (IndexError in its second-order update).
@pytest.mark.parametrize(
    "name, overrides",
    [
        ("euler", {"use_karras_sigmas": True}),
        ("euler", {"final_sigmas_type": "sigma_min"}),
        ("euler", {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"}),
        ("euler", {"interpolation_type": "log_linear"}),
        (
            "euler_a",
            {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
        ),
        ("ddim", {"clip_sample": True}),
        ("ddim", {"set_alpha_to_one": True}),
        ("ddim", {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"}),
        ("dpmpp_2m", {"solver_type": "heun"}),
        ("dpmpp_2m", {"solver_order": 1}),
        ("dpmpp_2m", {"final_sigmas_type": "sigma_min"}),
        ("dpmpp_2m", {"lower_order_final": False, "final_sigmas_type": "sigma_min"}),
        ("dpmpp_2m", {"use_exponential_sigmas": True}),
        ("dpmpp_2m", {"beta_schedule": "squaredcos_cap_v2"}),
        ("pndm", {"set_alpha_to_one": True}),
        ("ddpm", {"clip_sample": True}),
        ("ddpm", {"variance_type": "fixed_small_log"}),
        ("ddpm", {"variance_type": "fixed_large"}),
        ("heun", {"use_karras_sigmas": True}),
        ("heun", {"clip_sample": True}),
        (
            "dpmpp_2m",
            {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
        ),
        ("unipc", {"solver_type": "bh1", "final_sigmas_type": "sigma_min"}),
        ("unipc", {"solver_order": 1}),
        ("unipc", {"solver_order": 3}),
        (
            "unipc",
            {"solver_order": 3, "solver_type": "bh1", "lower_order_final": False, "final_sigmas_type": "sigma_min"},
        ),
        ("unipc", {"use_karras_sigmas": True}),
        ("unipc", {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min"}),
        ("unipc", {"use_exponential_sigmas": True}),
        ("unipc", {"final_sigmas_type": "sigma_min"}),
        ("unipc", {"solver_type": "midpoint"}),  # a DPM++ config: diffusers' UniPC reads it as bh2
        ("unipc", {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"}),
        # LCM: the distillation schedule's length and the boundary condition's timestep scaling.
        ("lcm", {"original_inference_steps": 30, "timestep_scaling": 5.0}),
        ("lcm", {"clip_sample": True, "set_alpha_to_one": False}),
        ("lcm", {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction"}),
    ],
)
@pytest.mark.parametrize("steps", [4, 30])
def test_config_options(sd15_config, name, overrides, steps):
    ref_final, our_final, _, _, magnitudes = run_both(name, dict(sd15_config, **overrides), steps)
    assert_within_loop_bound(our_final, ref_final, magnitudes)


@pytest.mark.parametrize("eta", [0.3, 1.0])
@pytest.mark.parametrize(
    "overrides",
    [{}, {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"}],
)
@pytest.mark.parametrize("steps", [1, 3, 10])
def test_ddim_with_eta_matches_reference(sd15_config, eta, overrides, steps):
    """DDIM's variance noise: diffusers draws it from the pipeline's generator each step."""
    ref_final, our_final, _, _, magnitudes = run_both("ddim", dict(sd15_config, **overrides), steps, eta=eta)
    _, deterministic, _, _, _ = run_both("ddim", dict(sd15_config, **overrides), steps)
    # Zero SNR with eta 1 (the first step's direction weight is 0, by rounding sometimes negative):
    # diffusers can give NaN there, sdrt takes the weight as 0.
    if np.isnan(ref_final).any():
        assert np.isfinite(our_final).all()
    else:
        assert_within_loop_bound(our_final, ref_final, magnitudes)
    if steps > 1:  # one step lands on alpha_bar 1, where no noise is added
        assert np.abs(our_final - deterministic).max() > 1e-2  # the noise is drawn and added


def test_unipc_bh1_ends_on_the_data_prediction_where_diffusers_gives_nan(sd15_config):
    """With a zero final noise level, B(h) = h is infinite on the last step; diffusers then
    multiplies it by a zero correction (NaN). That step is first order, with nothing to
    correct, and lands on sigma 0: sdrt returns the step's data prediction, which diffusers'
    own convert_model_output gives from the same model output and sample."""
    config = dict(sd15_config, solver_type="bh1")
    ref_final, _, _, _, _ = run_both("unipc", config, 4)
    assert np.isnan(ref_final).all()
    expected, our_final, _, _, magnitudes = run_both("unipc", config, 4, last_step_x0=True)
    assert np.isfinite(expected).all()
    assert_within_loop_bound(our_final, expected, magnitudes)


def test_the_loop_bound_catches_a_slightly_wrong_schedule(sd15_config):
    """The float32 bound is tight enough to fail on a 3e-3 relative slip in one sigma of ten."""
    reference, _, _, ours, magnitudes = run_both("euler", sd15_config, 10)
    ours.sigmas[3] *= np.float32(1 + 3e-3)
    generator = TorchGenerator(3)
    sample = generator.randn(SAMPLE_SHAPE) * np.float32(ours.init_noise_sigma)
    for index in range(len(ours.timesteps)):
        output = stand_in_model(ours.scale_model_input(sample, index), float(ours.timesteps[index]))
        sample = ours.step(output, index, sample)
    with pytest.raises(AssertionError, match="exceeds the float32 bound"):
        assert_within_loop_bound(sample, reference, magnitudes)


@pytest.mark.parametrize("name", NAMES)
def test_add_noise_matches_reference(sd15_config, name):
    reference = reference_scheduler(name, sd15_config)
    ours = sampler_from_config(name, sd15_config)
    reference.set_timesteps(30)
    ours.set_timesteps(30)
    rng = np.random.default_rng(1)
    original = rng.standard_normal(SAMPLE_SHAPE).astype(np.float32)
    noise = rng.standard_normal(SAMPLE_SHAPE).astype(np.float32)
    for index in (0, 7, 29):
        timestep = reference.timesteps[index : index + 1].repeat(SAMPLE_SHAPE[0])
        expected = reference.add_noise(torch.from_numpy(original), torch.from_numpy(noise), timestep).numpy()
        assert relative_error(ours.add_noise(original, noise, index), expected) < 1e-6


def test_ancestral_sampler_needs_the_generator(sd15_config):
    ours = sampler_from_config("euler_a", sd15_config)
    ours.set_timesteps(3)
    sample = np.ones(SAMPLE_SHAPE, np.float32)
    with pytest.raises(ValueError, match="needs the generator"):
        ours.step(sample, 0, sample)


def test_unsupported_options_are_clear_errors(sd15_config):
    from sdrt.errors import ConfigError

    with pytest.raises(ConfigError, match="algorithm_type 'sde-dpmsolver\\+\\+' is not supported"):
        sampler_from_config("dpmpp_2m", dict(sd15_config, algorithm_type="sde-dpmsolver++"))
    with pytest.raises(ConfigError, match="solver_order 3 is not supported"):
        sampler_from_config("dpmpp_2m", dict(sd15_config, solver_order=3))
    with pytest.raises(ConfigError, match="dynamic thresholding"):
        sampler_from_config("ddim", dict(sd15_config, thresholding=True))


def test_pndm_runs_plms_on_a_config_without_skip_prk_steps(sd15_config):
    """A scheduler file saved by another class (LMS here) lacks skip_prk_steps, whose diffusers
    default is the Runge-Kutta warm-up; `pndm` is documented as PLMS and runs it, equal to
    diffusers' PNDMScheduler with skip_prk_steps set."""
    config = {key: value for key, value in sd15_config.items() if key != "skip_prk_steps"}
    config["_class_name"] = "LMSDiscreteScheduler"
    ref_final, our_final, reference, _, magnitudes = run_both("pndm", config, 10)
    assert reference.config.skip_prk_steps
    assert_within_loop_bound(our_final, ref_final, magnitudes)


def test_lcm_steps_are_a_subset_of_its_distillation_schedule(sd15_config):
    with pytest.raises(
        ConfigError, match=r"steps \(8\) cannot exceed this LCM schedule's original_inference_steps \(6\)"
    ):
        sampler_from_config("lcm", dict(sd15_config, original_inference_steps=6)).set_timesteps(8)


SCHEDULE_PAIRS = [
    (name, schedule)
    for name in NAMES
    for schedule in SCHEDULES
    if schedule != "automatic"
    and SCHEDULES[schedule].supports(SAMPLERS[name].cls.config_defaults)
    and not set(SCHEDULES[schedule].overrides) & set(SAMPLERS[name].overrides)
]


@pytest.mark.parametrize("name, schedule", SCHEDULE_PAIRS)
def test_schedule_types_equal_diffusers_configured_alike(sd15_config, name, schedule):
    """A1111's schedule types (Karras, Exponential, SGM Uniform) equal the diffusers class with the
    documented config options."""
    ref_final, our_final, reference, ours, magnitudes = run_both(name, sd15_config, 12, schedule=schedule)
    np.testing.assert_allclose(
        np.asarray(ours.timesteps, dtype=np.float64), reference.timesteps.numpy().astype(np.float64), rtol=1e-6
    )
    assert_within_loop_bound(our_final, ref_final, magnitudes)


def test_schedule_types_a_sampler_cannot_take_are_refused(sd15_config):
    assert ("euler", "karras") in SCHEDULE_PAIRS and ("dpmpp_2m", "exponential") in SCHEDULE_PAIRS
    for name, schedule, words in (
        ("euler_a", "karras", "does not take"),
        ("dpmpp_2m_karras", "exponential", "fixes"),
        ("euler", "Align Your Steps", "no diffusers equivalent"),
        ("euler", "warp", "unknown schedule"),
    ):
        with pytest.raises(ConfigError, match=words):
            sampler_from_config(name, sd15_config, schedule)
