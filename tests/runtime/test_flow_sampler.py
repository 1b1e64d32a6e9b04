"""flow_euler against diffusers' FlowMatchEulerDiscreteScheduler (tables, whole loops with a
deterministic stand-in velocity, image-to-image starts), the sampler interface both model
spaces share, and the registry keeping flow samplers away from the SD families."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from sdrt.errors import ConfigError, GenerationError
from sdrt.runtime.manifest import Manifest
from sdrt.runtime.request import GenerationRequest
from sdrt.runtime.schedulers import (
    COMFYUI,
    DIFFUSERS,
    DISPLAY_NAMES,
    KDIFFUSION,
    SAMPLER_NAMES,
    SAMPLERS,
    sampler_entries,
    sampler_from_config,
    sampler_names,
)
from sdrt.runtime.schedulers.base import predict_x0
from sdrt.runtime.schedulers.flow import FLOW_UNSUPPORTED
from sdrt.runtime.schedulers.spaces import DIFFUSION, FLOW, FLOW_PREDICTION, SPACES
from support.numerics import UNIT_ROUNDOFF, assert_within_loop_bound

SAMPLE_SHAPE = (2, 4, 8, 12)
STEP_COUNTS = [1, 2, 3, 4, 10, 28, 50]
#: sdrt's flow tables are computed with the same float64 and float32 operations as diffusers', in
#: the same order; a table entry may differ by this many roundings of the value's size (the last
#: float32 cast and the timestep's multiplication by num_train_timesteps).
TABLE_ROUNDINGS = 2
#: scale_noise rounds three times (two products and a sum) on values bounded by the inputs.
SCALE_NOISE_ROUNDINGS = 3
#: diffusers' SD3 default, a FLUX-style dynamic shift with the image sequence length of 1024 x 1024
#: (mu = 1.15, its max_shift), one of 512 x 512 in between, and a linear time shift.
CONFIGS = {
    "shift 1": ({}, None),
    "shift 3": ({"shift": 3.0}, None),
    "dynamic mu 1.15": ({"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15}, 1.15),
    "dynamic mu 0.7": ({"use_dynamic_shifting": True}, 0.7),
    "linear mu 1.3": ({"use_dynamic_shifting": True, "time_shift_type": "linear"}, 1.3),
    "shift 3, terminal 0.1": ({"shift": 3.0, "shift_terminal": 0.1}, None),
}
SD3_CONFIG = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}


def stand_in_velocity(sample: np.ndarray, timestep: float) -> np.ndarray:
    """A deterministic "model": smooth in the sample (slope below 0.7) and in the timestep."""
    return (np.sin(0.7 * sample + timestep / 97.0) * 0.9 + 0.05 * sample).astype(np.float32)


def both(config: dict, steps: int, mu: float | None):
    reference = FlowMatchEulerDiscreteScheduler.from_config(config)
    reference.set_timesteps(steps, mu=mu)
    ours = sampler_from_config("flow_euler", config)
    ours.set_timesteps(steps, mu=mu)
    return reference, ours


def assert_table_equal(got: np.ndarray, expected: torch.Tensor) -> None:
    expected = expected.numpy()
    assert got.dtype == np.float32 and got.shape == expected.shape
    bound = TABLE_ROUNDINGS * UNIT_ROUNDOFF * float(np.abs(expected).max())
    np.testing.assert_allclose(got, expected, rtol=0, atol=bound)


def run_loops(reference, ours, start: int, ref_sample: torch.Tensor, our_sample: np.ndarray):
    """Both samplers from call `start` to the end, each on its own sample; (reference result,
    ours, the largest value either loop rounds at each call and at the end)."""
    magnitudes = []
    for index in range(start, len(ours.timesteps)):
        timestep = reference.timesteps[index]
        ref_output = stand_in_velocity(ref_sample.numpy(), float(timestep))
        magnitudes.append(max(float(ref_sample.abs().max()), float(np.abs(ref_output).max())))
        ref_sample = reference.step(torch.from_numpy(ref_output), timestep, ref_sample).prev_sample
        model_input = ours.scale_model_input(our_sample, index)
        our_sample = ours.step(stand_in_velocity(model_input, float(ours.timesteps[index])), index, our_sample)
    magnitudes.append(float(ref_sample.abs().max()))
    return ref_sample.numpy(), our_sample, magnitudes


def start_noise(seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(SAMPLE_SHAPE).astype(np.float32)


def runnable_cases() -> list[tuple[str, int]]:
    """(config, steps) pairs; a one-step schedule cannot be stretched to a terminal shift, which
    test_one_step_shift_terminal_is_refused checks instead."""
    return [
        (case, steps)
        for case in CONFIGS
        for steps in STEP_COUNTS
        if not (CONFIGS[case][0].get("shift_terminal") and steps == 1)
    ]


@pytest.mark.parametrize("case, steps", runnable_cases())
def test_tables_match_reference(case, steps):
    config, mu = CONFIGS[case]
    reference, ours = both(config, steps, mu)
    assert_table_equal(ours.timesteps, reference.timesteps)
    assert_table_equal(ours.sigmas, reference.sigmas)
    assert ours.init_noise_sigma == 1.0  # the flow pipelines (SD3, FLUX) start from unscaled noise


@pytest.mark.parametrize("case, steps", runnable_cases())
def test_loop_matches_reference(case, steps):
    config, mu = CONFIGS[case]
    reference, ours = both(config, steps, mu)
    noise = start_noise()
    sample = noise * np.float32(ours.init_noise_sigma)
    ref_final, our_final, magnitudes = run_loops(reference, ours, 0, torch.from_numpy(noise.copy()), sample)
    assert_within_loop_bound(our_final, ref_final, magnitudes, seeded=False)
    assert np.abs(our_final - noise).max() > 0.1  # the loop moved the sample


@pytest.mark.parametrize("steps, start", [(4, 1), (10, 3), (28, 9), (28, 27)])
@pytest.mark.parametrize("case", ["shift 3", "dynamic mu 1.15"])
def test_image_to_image_start_matches_scale_noise(case, steps, start):
    """The SD3 img2img pipeline's start: scale_noise at the first kept timestep (begin index set),
    then the loop from there."""
    config, mu = CONFIGS[case]
    reference, ours = both(config, steps, mu)
    image = np.random.default_rng(5).standard_normal(SAMPLE_SHAPE).astype(np.float32) * np.float32(0.5)
    noise = start_noise(7)
    by_timestep = reference.scale_noise(
        torch.from_numpy(image), reference.timesteps[start : start + 1], torch.from_numpy(noise)
    )
    reference.set_begin_index(start)
    expected = reference.scale_noise(
        torch.from_numpy(image), reference.timesteps[start : start + 1], torch.from_numpy(noise)
    )
    got = ours.add_noise(image, noise, start)
    assert got.dtype == np.float32
    bound = SCALE_NOISE_ROUNDINGS * UNIT_ROUNDOFF * max(float(np.abs(image).max()), float(np.abs(noise).max()))
    np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=bound)
    np.testing.assert_allclose(got, by_timestep.numpy(), rtol=0, atol=bound)
    sigma = float(ours.sigmas[start])
    assert 0 < sigma < 1 and np.abs(got - (sigma * noise + (1 - sigma) * image)).max() <= bound
    ref_final, our_final, magnitudes = run_loops(reference, ours, start, expected, got)
    assert_within_loop_bound(our_final, ref_final, magnitudes, seeded=False)


@pytest.mark.parametrize("seq_len", [256, 1024, 4096, 6400])
@pytest.mark.parametrize("shifts", [{}, {"base_shift": 0.3, "max_shift": 1.4, "max_image_seq_len": 8192}])
def test_dynamic_shift_mu_is_the_pipelines(seq_len, shifts):
    config = {"use_dynamic_shifting": True, **shifts}
    reference = FlowMatchEulerDiscreteScheduler.from_config(config)
    ours = sampler_from_config("flow_euler", config)
    expected = calculate_shift(
        seq_len,
        reference.config.base_image_seq_len,
        reference.config.max_image_seq_len,
        reference.config.base_shift,
        reference.config.max_shift,
    )
    assert ours.dynamic_shift_mu(seq_len) == expected


def test_last_step_lands_on_the_flow_x0():
    """The one conversion: x0 = sample - sigma * velocity is where Euler's step to sigma 0 lands."""
    ours = sampler_from_config("flow_euler", SD3_CONFIG)
    ours.set_timesteps(5)
    sample, last = start_noise(), len(ours.timesteps) - 1
    velocity = stand_in_velocity(sample, float(ours.timesteps[last]))
    x0 = predict_x0(FLOW_PREDICTION, velocity, sample, ours.sigmas[last])
    assert ours.sigmas[last + 1] == 0
    bound = 2 * UNIT_ROUNDOFF * max(float(np.abs(sample).max()), float(np.abs(velocity).max()))
    np.testing.assert_allclose(ours.step(velocity, last, sample), x0, rtol=0, atol=bound)
    # diffusers' own x0 of a flow model (its stochastic_sampling branch): sample - sigma * output.
    expected = torch.from_numpy(sample) - torch.tensor(ours.sigmas[last]) * torch.from_numpy(velocity)
    np.testing.assert_array_equal(x0, expected.numpy())


@pytest.mark.parametrize("key", list(FLOW_UNSUPPORTED))
def test_unimplemented_options_are_refused(key):
    with pytest.raises(ConfigError, match=key):
        sampler_from_config("flow_euler", {**SD3_CONFIG, key: FLOW_UNSUPPORTED[key][0]})
    sampler_from_config("flow_euler", {**SD3_CONFIG, key: False})  # the default is accepted


def test_mu_is_required_exactly_with_dynamic_shifting():
    dynamic = sampler_from_config("flow_euler", {"use_dynamic_shifting": True})
    with pytest.raises(ConfigError, match="needs mu"):
        dynamic.set_timesteps(10)
    with pytest.raises(ConfigError, match="mu is for"):
        sampler_from_config("flow_euler", SD3_CONFIG).set_timesteps(10, mu=1.0)
    for bad in (float("nan"), "1.0", True, 1e6):
        with pytest.raises(ConfigError, match="mu"):
            dynamic.set_timesteps(10, mu=bad)
    with pytest.raises(ConfigError, match="positive mu"):
        sampler_from_config("flow_euler", {"use_dynamic_shifting": True, "time_shift_type": "linear"}).set_timesteps(
            10, mu=0.0
        )


def test_one_step_shift_terminal_is_refused():
    with pytest.raises(ConfigError, match="shift_terminal"):
        sampler_from_config("flow_euler", {"shift_terminal": 0.1}).set_timesteps(1)


def test_bad_flow_settings_are_refused():
    for settings, message in [
        ({"shift": 0}, "shift must be positive"),
        ({"shift_terminal": 1.0}, "shift_terminal"),
        ({"time_shift_type": "cubic"}, "time_shift_type"),
        ({"base_image_seq_len": 4096}, "must differ"),
    ]:
        with pytest.raises(ConfigError, match=message):
            sampler_from_config("flow_euler", settings)


def test_spaces_do_not_mix_through_configs(sd15_dir):
    """A diffusion model's scheduler file (epsilon or v) is refused by flow_euler, and a
    flow_prediction config by every diffusion sampler."""
    sd15 = json.loads((sd15_dir / "scheduler" / "scheduler_config.json").read_text())
    for prediction in ("epsilon", "v_prediction"):
        with pytest.raises(ConfigError, match="samples flow-matching models"):
            sampler_from_config("flow_euler", dict(sd15, prediction_type=prediction))
    for name in SAMPLER_NAMES:
        with pytest.raises(ConfigError, match="samples diffusion models"):
            sampler_from_config(name, dict(sd15, prediction_type=FLOW_PREDICTION))
    with pytest.raises(ConfigError, match="schedule type"):
        sampler_from_config("flow_euler", SD3_CONFIG, "karras")


def test_registry_lists_samplers_by_space():
    assert SAMPLER_NAMES == sampler_names(DIFFUSION)
    assert "flow_euler" not in SAMPLER_NAMES and "flow_euler" not in DISPLAY_NAMES.values()
    assert sampler_names(FLOW)[0] == "flow_euler"
    families = (DIFFUSERS, KDIFFUSION, COMFYUI)
    assert set(SAMPLERS) == {name for space in SPACES for family in families for name in sampler_names(space, family)}
    assert sampler_names(FLOW, KDIFFUSION) == ()
    assert all(entry.space == FLOW for entry in sampler_entries(FLOW))
    with pytest.raises(ValueError):
        sampler_names("latent-consistency")


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_has_the_shared_tables(sd15_dir, name):
    """timesteps (float32), sigmas (one per call and the final level), and add_noise at
    sigmas[i]: a noise to signal ratio of sigma for diffusion, weights sigma and 1 - sigma for flow."""
    if SAMPLERS[name].space == FLOW:
        config = SD3_CONFIG
    else:
        config = json.loads((sd15_dir / "scheduler" / "scheduler_config.json").read_text())
    sampler = sampler_from_config(name, config)
    sampler.set_timesteps(10)
    calls = len(sampler.timesteps)
    assert sampler.timesteps.dtype == np.float32 and sampler.sigmas.dtype == np.float32
    assert sampler.sigmas.shape == (calls + 1,)
    # DPM fast's 3-stage steps call the model below the next step's level, then step back up to it.
    assert name in ("k_dpm_fast", "comfy_dpm_fast") or np.all(np.diff(sampler.sigmas) <= 0)
    assert sampler.sigmas[0] > sampler.sigmas[-1]
    ones, zeros = np.ones(SAMPLE_SHAPE, np.float32), np.zeros(SAMPLE_SHAPE, np.float32)
    for index in range(calls):
        sigma = np.float64(sampler.sigmas[index])
        signal = np.float64(sampler.add_noise(ones, zeros, index).max())
        noise = np.float64(sampler.add_noise(zeros, ones, index).max())
        if SAMPLERS[name].space == FLOW:
            assert (signal, noise) == pytest.approx((1 - sigma, sigma), abs=4 * UNIT_ROUNDOFF)
        elif SAMPLERS[name].family == COMFYUI and index == 0:  # ComfyUI's noise_scaling: sqrt(1 + sigma^2) at full
            assert noise / signal == pytest.approx(sampler.init_noise_sigma, rel=8 * UNIT_ROUNDOFF)
        else:
            assert noise / signal == pytest.approx(sigma, rel=8 * UNIT_ROUNDOFF)


def test_sd_request_naming_flow_euler_is_refused(exported_tiny):
    manifest = Manifest.load(exported_tiny("standard"))
    assert manifest.sampler_space == DIFFUSION
    with pytest.raises(
        GenerationError, match="flow_euler is a flow-matching sampler; this model is a diffusion model"
    ) as caught:
        GenerationRequest("a photo of a cat", steps=4, sampler="flow_euler").resolve(manifest)
    assert caught.value.param == "sampler"
    GenerationRequest("a photo of a cat", steps=4, sampler="euler").resolve(manifest)
