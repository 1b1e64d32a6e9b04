"""sdrt's NumPy LMS scheduler against diffusers.LMSDiscreteScheduler built from the same config."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from diffusers import LMSDiscreteScheduler as ReferenceLMS

from sdrt.errors import ConfigError
from sdrt.runtime.schedulers import sampler_from_config
from sdrt.runtime.schedulers.lms import LMSDiscreteScheduler
from sdrt.runtime.schedulers.tables import compute_alphas_cumprod
from support.numerics import assert_within_loop_bound

STEP_COUNTS = [1, 2, 3, 4, 5, 10, 25, 50, 100]
#: As many steps as training timesteps: whole loops are slow (diffusers integrates every LMS
#: coefficient), so one runs whole and every spacing and prediction compares its tables.
FULL_SCHEDULE = 1000
SPACINGS = ["linspace", "leading", "trailing"]
PREDICTIONS = ["epsilon", "v_prediction"]
SAMPLE_SHAPE = (2, 4, 8, 12)
# sigmas and timesteps: float32 tables from float64 interpolation and exp/log, a few ulp apart.
TABLE_TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def sd15_scheduler_config(sd15_dir) -> dict:
    """SD 1.5's scheduler file: it names PNDMScheduler, whose shared fields LMS takes over."""
    return json.loads((sd15_dir / "scheduler" / "scheduler_config.json").read_text())


def stand_in_model(model_input: np.ndarray, timestep: float) -> np.ndarray:
    """A deterministic, sample- and time-dependent fake UNet output."""
    return (np.sin(0.7 * model_input + timestep / 97.0) * 0.9 + 0.05 * model_input).astype(np.float32)


def run_both(config: dict, steps: int):
    """Denoise the same initial noise with both schedulers; returns (reference, sdrt) final
    samples, the two schedulers after the loop and the reference's largest |sample| before
    each call and at the end (for the float32 bound of tests/support/numerics.py)."""
    reference = ReferenceLMS.from_config(config)
    ours = LMSDiscreteScheduler.from_config(config)
    reference.set_timesteps(steps)
    ours.set_timesteps(steps)
    noise = np.random.default_rng(steps).standard_normal(SAMPLE_SHAPE).astype(np.float32)
    ref_sample = torch.from_numpy(noise) * reference.init_noise_sigma
    our_sample = noise * np.float32(ours.init_noise_sigma)
    magnitudes = []
    for index, timestep in enumerate(reference.timesteps):
        magnitudes.append(float(ref_sample.abs().max()))
        ref_output = stand_in_model(reference.scale_model_input(ref_sample, timestep).numpy(), float(timestep))
        ref_sample = reference.step(torch.from_numpy(ref_output), timestep, ref_sample).prev_sample
        our_output = stand_in_model(ours.scale_model_input(our_sample, index), float(ours.timesteps[index]))
        our_sample = ours.step(our_output, index, our_sample)
    magnitudes.append(float(ref_sample.abs().max()))
    return ref_sample.numpy(), our_sample, reference, ours, magnitudes


def assert_tables_match(reference, ours):
    np.testing.assert_allclose(ours.timesteps, reference.timesteps.numpy(), rtol=TABLE_TOLERANCE, atol=0)
    np.testing.assert_allclose(ours.sigmas, reference.sigmas.numpy(), rtol=TABLE_TOLERANCE, atol=0)
    assert ours.init_noise_sigma == pytest.approx(float(reference.init_noise_sigma), rel=TABLE_TOLERANCE)


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", STEP_COUNTS)
def test_whole_loop_matches_reference(sd15_scheduler_config, spacing, prediction, steps):
    config = dict(sd15_scheduler_config, timestep_spacing=spacing, prediction_type=prediction)
    ref_final, our_final, reference, ours, magnitudes = run_both(config, steps)
    assert_tables_match(reference, ours)
    assert_within_loop_bound(our_final, ref_final, magnitudes, seeded=False)


@pytest.mark.slow  # 8 s: diffusers integrates 1000 LMS steps
def test_whole_loop_of_the_full_schedule_matches_reference(sd15_scheduler_config):
    ref_final, our_final, reference, ours, magnitudes = run_both(dict(sd15_scheduler_config), FULL_SCHEDULE)
    assert_tables_match(reference, ours)
    assert_within_loop_bound(our_final, ref_final, magnitudes, seeded=False)


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("spacing", SPACINGS)
def test_full_schedule_tables_match_reference(sd15_scheduler_config, spacing, prediction):
    config = dict(sd15_scheduler_config, timestep_spacing=spacing, prediction_type=prediction)
    if spacing == "leading":
        # With steps_offset=1 this schedule repeats a sigma (see the test below); SD 2.x-style
        # configs use steps_offset=0, which is well defined.
        config["steps_offset"] = 0
    reference, ours = ReferenceLMS.from_config(config), LMSDiscreteScheduler.from_config(config)
    reference.set_timesteps(FULL_SCHEDULE)
    ours.set_timesteps(FULL_SCHEDULE)
    assert_tables_match(reference, ours)


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", [1, 2, 5, 25, 50])
def test_karras_sigmas_match_reference(sd15_scheduler_config, spacing, prediction, steps):
    config = dict(sd15_scheduler_config, timestep_spacing=spacing, prediction_type=prediction, use_karras_sigmas=True)
    ref_final, our_final, reference, ours, magnitudes = run_both(config, steps)
    assert_tables_match(reference, ours)
    assert_within_loop_bound(our_final, ref_final, magnitudes, seeded=False)


@pytest.mark.parametrize("steps", [3, 30])
def test_exponential_sigmas_match_reference(sd15_scheduler_config, steps):
    config = dict(sd15_scheduler_config, use_exponential_sigmas=True)
    ref_final, our_final, reference, ours, magnitudes = run_both(config, steps)
    assert_tables_match(reference, ours)
    assert_within_loop_bound(our_final, ref_final, magnitudes, seeded=False)


@pytest.mark.parametrize(
    "overrides",
    [
        {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
        {"beta_schedule": "squaredcos_cap_v2"},
        {"trained_betas": np.linspace(1e-4, 0.03, 1000).tolist()},
        {"beta_schedule": "linear", "num_train_timesteps": 500},
    ],
    ids=["linear", "scaled_linear", "cosine", "trained_betas", "500_train_steps"],
)
def test_beta_schedules_are_bit_exact(sd15_scheduler_config, overrides):
    config = dict(sd15_scheduler_config, **overrides)
    reference = ReferenceLMS.from_config(config)
    ours = LMSDiscreteScheduler.from_config(config)
    np.testing.assert_array_equal(compute_alphas_cumprod(ours.config), reference.alphas_cumprod.numpy())
    for steps in (7, 50):
        reference.set_timesteps(steps)
        ours.set_timesteps(steps)
        assert_tables_match(reference, ours)


def test_leading_1000_steps_with_offset_is_a_clear_error_not_nan(sd15_scheduler_config):
    """leading spacing, steps_offset=1, 1000 steps: timesteps 1000 and 999 share one sigma.
    diffusers' LMS then divides by zero and returns inf/NaN; sdrt refuses with a reason."""
    config = dict(sd15_scheduler_config, timestep_spacing="leading")
    reference = ReferenceLMS.from_config(config)
    reference.set_timesteps(1000)
    sample = torch.ones(SAMPLE_SHAPE)
    for timestep in reference.timesteps[:3]:
        sample = reference.step(torch.full(SAMPLE_SHAPE, 0.1), timestep, sample).prev_sample
    assert not torch.isfinite(sample).all()
    with pytest.raises(ConfigError, match=r"same noise level .*\(at most 999 steps here\)$"):
        LMSDiscreteScheduler.from_config(config).set_timesteps(1000)
    # The count the error offers is the largest that works: diffusers' own LMS stays finite there.
    reference.set_timesteps(999)
    assert len(set(reference.sigmas.tolist())) == len(reference.sigmas)
    LMSDiscreteScheduler.from_config(config).set_timesteps(999)


@pytest.mark.parametrize("steps, karras", [(100, True), (1000, True), (1000, False)])
def test_coefficients_equal_float64_quadrature(sd15_scheduler_config, steps, karras):
    """Where the reference cannot be the yardstick: diffusers evaluates the LMS integrand in
    float32, and with many closely spaced Karras sigmas its weights drift (6.8e-6 of a step at
    100 steps, 5.8e-3 at 1000). sdrt's exact integrals must equal float64 quadrature."""
    from scipy import integrate

    ours = LMSDiscreteScheduler.from_config(dict(sd15_scheduler_config, use_karras_sigmas=karras))
    ours.set_timesteps(steps)
    sigmas = ours.sigmas.astype(np.float64)
    for i in list(range(0, steps, max(1, steps // 40))) + [steps - 1]:
        order = min(i + 1, ours.order)
        for j in range(order):
            others = [sigmas[i - k] for k in range(order) if k != j]

            def basis(tau, j=j, others=others):
                return np.prod([(tau - o) / (sigmas[i - j] - o) for o in others])  # noqa: B023 (quad calls it now)

            exact = integrate.quad(basis, sigmas[i], sigmas[i + 1], epsabs=0, epsrel=1e-13)[0]
            width = abs(sigmas[i + 1] - sigmas[i])
            assert abs(ours.coefficients[i, j] - exact) <= 1e-9 * width, (i, j)


def test_coefficients_are_computed_once_and_sum_to_step_width(sd15_scheduler_config):
    ours = LMSDiscreteScheduler.from_config(sd15_scheduler_config)
    ours.set_timesteps(20)
    assert ours.coefficients.shape == (20, ours.order)
    # The Lagrange basis sums to one, so each row integrates to sigma[i+1] - sigma[i].
    widths = np.diff(ours.sigmas.astype(np.float64))
    np.testing.assert_allclose(ours.coefficients.sum(axis=1), widths, rtol=1e-12)
    # Effective order min(i + 1, 4): the first steps leave higher columns empty.
    assert ours.coefficients[0, 1:].tolist() == [0.0, 0.0, 0.0]
    assert ours.coefficients[1, 2:].tolist() == [0.0, 0.0]


def test_config_defaults_and_carry_over(sd15_scheduler_config):
    ours = sampler_from_config("lms", sd15_scheduler_config)
    reference = ReferenceLMS.from_config(sd15_scheduler_config)
    for name in (
        "num_train_timesteps",
        "beta_start",
        "beta_end",
        "beta_schedule",
        "prediction_type",
        "timestep_spacing",
        "steps_offset",
        "use_karras_sigmas",
    ):
        assert getattr(ours.config, name) == reference.config[name], name


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"beta_schedule": "quadratic"}, "beta_schedule 'quadratic' is not supported"),
        ({"prediction_type": "flow"}, "prediction_type 'flow' is not supported"),
        ({"timestep_spacing": "random"}, "timestep_spacing 'random' is not supported"),
        ({"use_karras_sigmas": True, "use_exponential_sigmas": True}, "exclude each other"),
        ({"use_beta_sigmas": True}, "use_beta_sigmas is not supported"),
        ({"trained_betas": [0.1, 0.2]}, "trained_betas has 2 values"),
    ],
)
def test_bad_configs_are_clear_errors(sd15_scheduler_config, overrides, message):
    with pytest.raises(ConfigError, match=message):
        LMSDiscreteScheduler.from_config(dict(sd15_scheduler_config, **overrides))


@pytest.mark.parametrize("steps", [0, -3, 2.5, 1001])
def test_bad_step_counts_are_clear_errors(sd15_scheduler_config, steps):
    with pytest.raises(ConfigError, match="steps"):
        LMSDiscreteScheduler.from_config(sd15_scheduler_config).set_timesteps(steps)


def test_unknown_sampler_name_lists_the_choices(sd15_scheduler_config):
    with pytest.raises(ConfigError, match="unknown sampler 'dpm'; choose one of lms"):
        sampler_from_config("dpm", sd15_scheduler_config)


def test_steps_out_of_order_are_refused(sd15_scheduler_config):
    ours = LMSDiscreteScheduler.from_config(sd15_scheduler_config)
    ours.set_timesteps(10)
    sample = np.ones(SAMPLE_SHAPE, dtype=np.float32)
    ours.step(sample, 3, sample)  # a run may start mid-schedule (image-to-image)
    with pytest.raises(RuntimeError, match="steps must run in order"):
        ours.step(sample, 5, sample)


def test_set_timesteps_is_cheap(sd15_scheduler_config):
    """Tables for 1000 steps are built without quadrature: a loose guard, not a benchmark."""
    import time

    ours = LMSDiscreteScheduler.from_config(sd15_scheduler_config)
    start = time.perf_counter()
    ours.set_timesteps(1000)
    assert time.perf_counter() - start < 5.0
    assert math.isfinite(float(ours.coefficients.sum()))
