"""The flow-matching samplers besides Euler against their diffusers classes: flow_heun
(FlowMatchHeunDiscreteScheduler), flow_dpmpp_2m and flow_unipc (DPMSolverMultistepScheduler and
UniPCMultistepScheduler with use_flow_sigmas, prediction_type "flow_prediction"): tables and
whole loops with a stand-in velocity (float32 bound of tests/support/numerics.py), images on the
tiny FLUX.1-dev and SD3 models against FluxPipeline / StableDiffusion3Pipeline (2/255 largest,
0.5/255 mean), and the registry keeping them to flow models."""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
import torch

from sdrt.errors import ConfigError, GenerationError
from sdrt.runtime.manifest import Manifest
from sdrt.runtime.pipeline import Pipeline
from sdrt.runtime.request import GenerationRequest
from sdrt.runtime.schedulers import SAMPLERS, sampler_from_config, sampler_names
from sdrt.runtime.schedulers.spaces import FLOW
from tests.conftest import sd3_reference
from tests.support.images import assert_same_image
from tests.support.numerics import assert_within_loop_bound

NEW_SAMPLERS = ("flow_heun", "flow_dpmpp_2m", "flow_unipc")
SAMPLE_SHAPE = (2, 4, 8, 12)
#: FLUX.1-dev's scheduler file (dynamic shifting), SD3's (a fixed shift of 3), diffusers' defaults.
FLUX_CONFIG = {"shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15}
SD3_CONFIG = {"shift": 3.0}
CONFIGS = {"sd3": (SD3_CONFIG, None), "flux mu 0.8": (FLUX_CONFIG, 0.8), "defaults": ({}, None)}
STEP_COUNTS = (1, 2, 5, 28)
PROMPT = "a red fox in a snowy forest at dawn"
SIZE = {"height": 64, "width": 48}
STEPS = 3


def reference(name: str, config: dict):
    """The diffusers class built as sdrt builds its sampler: the registry's overrides and, for
    the use_flow_sigmas solvers, flow_shift from the file's shift (flow_multistep's rule)."""
    entry = SAMPLERS[name]
    shift = {} if name == "flow_heun" else {"flow_shift": config.get("shift", 1.0)}
    return getattr(diffusers, entry.reference_name).from_config({**config, **entry.overrides, **shift})


class PipelineHeun(diffusers.FlowMatchHeunDiscreteScheduler):
    """FlowMatchHeun as sdrt runs it in FLUX: FluxPipeline passes its sigmas and mu to every
    scheduler, which this class's set_timesteps does not take; it has a fixed shift, so both go."""

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None):
        super().set_timesteps(len(sigmas) if num_inference_steps is None else num_inference_steps, device)


def stand_in_velocity(sample: np.ndarray, timestep: float) -> np.ndarray:
    return (np.sin(0.7 * sample + timestep / 97.0) * 0.9 + 0.05 * sample).astype(np.float32)


@pytest.mark.parametrize("steps", STEP_COUNTS)
@pytest.mark.parametrize("case", list(CONFIGS))
@pytest.mark.parametrize("name", NEW_SAMPLERS)
def test_tables_and_loops_match_diffusers(name, case, steps):
    config, mu = CONFIGS[case]
    mu = None if name == "flow_heun" else mu  # Heun has no dynamic shifting: its fixed shift
    ours, theirs = sampler_from_config(name, config), reference(name, config)
    ours.set_timesteps(steps, mu=mu)
    theirs.set_timesteps(steps) if mu is None else theirs.set_timesteps(steps, mu=mu)
    # Timesteps are whole numbers for the use_flow_sigmas solvers (diffusers stores int64).
    np.testing.assert_array_equal(ours.timesteps, theirs.timesteps.numpy().astype(np.float32))
    np.testing.assert_array_equal(ours.sigmas, theirs.sigmas.numpy())
    noise = np.random.default_rng(3).standard_normal(SAMPLE_SHAPE).astype(np.float32)
    sample, ref_sample, magnitudes = noise.copy(), torch.from_numpy(noise.copy()), []
    for index, timestep in enumerate(theirs.timesteps):
        velocity = stand_in_velocity(ref_sample.numpy(), float(timestep))
        magnitudes.append(max(float(ref_sample.abs().max()), float(np.abs(velocity).max())))
        ref_sample = theirs.step(torch.from_numpy(velocity), timestep, ref_sample).prev_sample
        sample = ours.step(stand_in_velocity(sample, float(ours.timesteps[index])), index, sample)
    magnitudes.append(float(ref_sample.abs().max()))
    assert_within_loop_bound(sample, ref_sample.numpy(), magnitudes, seeded=False)
    assert np.abs(sample - noise).max() > 0.1


#: Custom sigmas for flow UniPC: one starting at 1 (diffusers moves it 1e-6 below), one not, uneven.
CUSTOM_SIGMAS = {"from 1": [1.0, 0.75, 0.5, 0.25], "uneven": [0.9, 0.6, 0.3, 0.1, 0.05]}


@pytest.mark.parametrize("sigmas", list(CUSTOM_SIGMAS))
@pytest.mark.parametrize("case", list(CONFIGS))
def test_flow_unipc_custom_sigmas_match_diffusers(case, sigmas):
    """UniPCMultistepScheduler.set_timesteps(sigmas=...) with use_flow_sigmas: the given sigmas set
    the step count and are shifted as its own; tables and a whole loop equal."""
    config, mu = CONFIGS[case]
    custom = CUSTOM_SIGMAS[sigmas]
    ours, theirs = sampler_from_config("flow_unipc", config), reference("flow_unipc", config)
    ours.set_timesteps(len(custom), mu=mu, sigmas=custom)
    theirs.set_timesteps(sigmas=np.array(custom), **({} if mu is None else {"mu": mu}))
    np.testing.assert_array_equal(ours.timesteps, theirs.timesteps.numpy().astype(np.float32))
    np.testing.assert_array_equal(ours.sigmas, theirs.sigmas.numpy())
    noise = np.random.default_rng(4).standard_normal(SAMPLE_SHAPE).astype(np.float32)
    sample, ref_sample, magnitudes = noise.copy(), torch.from_numpy(noise.copy()), []
    for index, timestep in enumerate(theirs.timesteps):
        velocity = stand_in_velocity(ref_sample.numpy(), float(timestep))
        magnitudes.append(max(float(ref_sample.abs().max()), float(np.abs(velocity).max())))
        ref_sample = theirs.step(torch.from_numpy(velocity), timestep, ref_sample).prev_sample
        sample = ours.step(stand_in_velocity(sample, float(ours.timesteps[index])), index, sample)
    magnitudes.append(float(ref_sample.abs().max()))
    assert_within_loop_bound(sample, ref_sample.numpy(), magnitudes, seeded=False)
    ours.set_timesteps(len(custom), mu=mu)  # without them again: the linspace's own
    assert not np.array_equal(ours.sigmas, theirs.sigmas.numpy())
    with pytest.raises(ConfigError, match="takes no custom sigmas"):
        sampler_from_config("flow_dpmpp_2m", config).set_timesteps(4, mu=mu, sigmas=custom)


def test_flow_heun_image_to_image_start_is_scale_noise():
    """SD3's img2img start for a two-call sampler: the first kept step's first call."""
    ours, theirs = sampler_from_config("flow_heun", SD3_CONFIG), reference("flow_heun", SD3_CONFIG)
    ours.set_timesteps(6), theirs.set_timesteps(6)
    begin = 2 * ours.calls_per_step
    image, noise = (np.random.default_rng(seed).standard_normal(SAMPLE_SHAPE).astype(np.float32) for seed in (1, 2))
    theirs.set_begin_index(begin)
    expected = theirs.scale_noise(torch.from_numpy(image), theirs.timesteps[begin : begin + 1], torch.from_numpy(noise))
    np.testing.assert_allclose(ours.add_noise(image, noise, begin), expected.numpy(), rtol=0, atol=1e-6)


def test_registry_labels_and_refusals(exported_tiny):
    assert set(NEW_SAMPLERS) < set(sampler_names(FLOW))
    assert [SAMPLERS[name].display_name for name in NEW_SAMPLERS] == [
        "Heun (flow matching)",
        "DPM++ 2M (flow matching)",
        "UniPC (flow matching)",
    ]
    sd = Manifest.load(exported_tiny("standard"))
    for name in NEW_SAMPLERS:
        with pytest.raises(GenerationError, match=f"{name} is a flow-matching sampler") as caught:
            GenerationRequest("a cat", steps=4, sampler=name).resolve(sd)
        assert caught.value.param == "sampler"
    with pytest.raises(ConfigError, match="use_flow_sigmas is for flow-matching models"):
        sampler_from_config("dpmpp_2m", {"use_flow_sigmas": True})
    with pytest.raises(ConfigError, match="samples flow-matching models"):
        SAMPLERS["flow_dpmpp_2m"].cls.from_config({"prediction_type": "epsilon"})  # an SD file
    with pytest.raises(ConfigError, match="does not take schedule type"):
        sampler_from_config("flow_unipc", SD3_CONFIG, "karras")
    with pytest.raises(ConfigError, match="use_karras_sigmas does not apply"):
        sampler_from_config("flow_dpmpp_2m", {**SD3_CONFIG, "use_karras_sigmas": True})
    with pytest.raises(ConfigError, match="neither mu nor custom sigmas"):
        sampler_from_config("flow_heun", SD3_CONFIG).set_timesteps(4, mu=1.0)
    with pytest.raises(ConfigError, match="needs mu"):
        sampler_from_config("flow_unipc", FLUX_CONFIG).set_timesteps(4)
    with pytest.raises(ConfigError, match="time_shift_type must be exponential"):
        sampler_from_config("flow_dpmpp_2m", {**FLUX_CONFIG, "time_shift_type": "linear"})


@pytest.fixture(scope="module")
def flux_dev(exported_flux) -> Pipeline:
    return Pipeline.load(exported_flux("dev"))


@pytest.mark.parametrize("name", NEW_SAMPLERS)
def test_flux_dev_image_equals_flux_pipeline(name, tiny_flux, flux_dev):
    pipeline = diffusers.FluxPipeline.from_pretrained(tiny_flux["dev"])
    pipeline.set_progress_bar_config(disable=True)
    config = dict(pipeline.scheduler.config)
    pipeline.scheduler = PipelineHeun.from_config(config) if name == "flow_heun" else reference(name, config)
    got = flux_dev.generate(PROMPT, steps=STEPS, seed=1, guidance_scale=3.5, sampler=name, **SIZE)
    expected = pipeline(
        PROMPT,
        num_inference_steps=STEPS,
        guidance_scale=3.5,
        generator=torch.Generator().manual_seed(1),
        max_sequence_length=flux_dev.manifest.flux.max_sequence_length,
        output_type="np",
        **SIZE,
    ).images
    assert got.parameters["sampler"] == name
    assert_same_image(got.array, expected)


def test_sd3_image_equals_stable_diffusion_3_pipeline(tiny_sd3, exported_sd3):
    """DPM++ 2M on SD3: flow_shift is the model's shift of 3 (see flow_multistep)."""
    ours = Pipeline.load(exported_sd3("t5"))
    pipeline = sd3_reference("StableDiffusion3Pipeline", tiny_sd3)
    pipeline.scheduler = reference("flow_dpmpp_2m", dict(pipeline.scheduler.config))
    assert pipeline.scheduler.config.flow_shift == 3.0
    got = ours.generate(PROMPT, steps=STEPS, seed=2, guidance_scale=5.0, sampler="flow_dpmpp_2m", **SIZE)
    expected = pipeline(
        prompt=PROMPT,
        num_inference_steps=STEPS,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(2),
        output_type="np",
        **SIZE,
    ).images
    assert_same_image(got.array, expected)
