"""SDXL's ensemble of experts: the base model denoises the high-noise part of the schedule,
the refiner the rest, handing over latents (diffusers' `denoising_end` on the base pipeline and
`denoising_start` on `StableDiffusionXLImg2ImgPipeline`, whose rules this module reproduces).

The switch s in (0, 1) is a fraction of the training schedule: the base runs the steps whose
timestep is >= round(T - s * T) (T the training timesteps), the refiner the steps below it,
plus one for a second-order sampler whose count would otherwise split a step's pair of calls.
The refiner continues with the base's generator and decodes with its own VAE.

With A1111's k-diffusion samplers the refiner is A1111's instead: the same sampler run goes on
with the refiner's model and conditioning from the first call whose level is past the switch
(a1111_switch_call), its history (multistep, second calls) kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sdrt.errors import GenerationError, ModelFolderError
from sdrt.runtime.loop.conditioning import encode_conditioning
from sdrt.runtime.loop.denoiser import EngineDenoiser
from sdrt.runtime.loop.guiders import guider_for
from sdrt.runtime.loop.modes import DenoiseStart
from sdrt.runtime.loop.stage import Stage
from sdrt.runtime.loop.timings import TEXT_ENCODER, Timings
from sdrt.runtime.request_resolve import ResolvedRequest
from sdrt.runtime.schedulers import Scheduler

if TYPE_CHECKING:
    from sdrt.runtime.pipeline import Pipeline


def cutoff(sampler: Scheduler, switch: float) -> int:
    train = sampler.config.num_train_timesteps
    return int(round(train - switch * train))


def base_end(sampler: Scheduler, start: int, switch: float) -> int:
    """The UNet call the base stops before: the calls from `start` whose timestep is at or
    above the cutoff."""
    return start + int(np.count_nonzero(sampler.timesteps[start:] >= cutoff(sampler, switch)))


def a1111_switch_call(sampler: Scheduler, start: int, switch: float) -> int:
    """A1111's refiner switch for its k-diffusion samplers (sd_samplers_common.apply_refiner,
    checked before every model call): the first call from `start` whose noise level's nearest
    training timestep t has (T - 1 - t) / T >= `switch` (T the training timesteps); the
    sampler's own run continues on the refiner from there, mid-step for a two-call sampler."""
    # KDiffusionSampler's ModelSigmas: the model's sigma of every training timestep
    table = sampler.model.sigmas  # type: ignore[attr-defined]
    train = len(table)
    for call in range(start, len(sampler.timesteps)):
        nearest = int(np.argmin(np.abs(table - sampler.sigmas[call])))
        if (train - 1 - nearest) / train >= switch:
            return call
    return len(sampler.timesteps)


def refiner_start(sampler: Scheduler, switch: float) -> int:
    """The UNet call the refiner starts at."""
    remaining = int(np.count_nonzero(sampler.timesteps < cutoff(sampler, switch)))
    if sampler.calls_per_step == 2 and remaining % 2 == 0:
        remaining += 1
    return len(sampler.timesteps) - remaining


def refiner_switches_mid_run(sampler_class: type) -> bool:
    """Whether a refiner takes over this sampler class's own run (A1111's k-diffusion samplers of
    fixed calls) rather than running a sampler of its own (diffusers' ensemble)."""
    from sdrt.runtime.schedulers.kdiffusion.sampler import KDiffusionSampler

    return issubclass(sampler_class, KDiffusionSampler) and not sampler_class.adaptive


def switches_mid_run(sampler: Scheduler) -> bool:
    return refiner_switches_mid_run(type(sampler))


def _a1111(sampler: Scheduler) -> bool:
    """An A1111 timestep sampler (DDIM, PLMS, UniPC as A1111 runs them): its refiner switch reads
    timesteps, not noise levels; not run with a refiner."""
    from sdrt.runtime.schedulers.a1111_timesteps import A1111TimestepSampler

    return isinstance(sampler, A1111TimestepSampler)


def check_pair(base: Pipeline, refiner: Pipeline) -> None:
    """A refiner needs a base whose family takes one, a family that refines it (the families'
    `features` and `refines`: SDXL's), and the same latent space."""
    if "refiner" not in base.family.features:
        raise ModelFolderError(f"a refiner needs an SDXL base model; {base.folder} is {base.manifest.family}")
    if base.family.name not in refiner.family.refines:
        raise ModelFolderError(f"{refiner.folder} is {refiner.manifest.family}, not an SDXL model to refine with")
    for field in ("latent_channels", "vae_scale_factor"):
        if getattr(base.manifest, field) != getattr(refiner.manifest, field):
            raise ModelFolderError(
                f"the refiner's {field} ({getattr(refiner.manifest, field)}) differs from the "
                f"base model's ({getattr(base.manifest, field)})"
            )


def refiner_stage(refiner: Pipeline | None, resolved: ResolvedRequest, base: Stage, timings: Timings) -> Stage:
    """The refiner's stage of a request with a refiner switch; ends the base's stage at the switch.
    (What a refiner runs with was checked when the request was resolved: sdrt.runtime.features.combinations.)"""
    request = resolved.request
    if refiner is None:
        raise GenerationError("refiner_switch needs a refiner; load one (--refiner DIR)", "refiner_switch")
    switch_at = request.refiner_switch
    assert switch_at is not None  # compose runs this stage only for a request with a switch
    engine = refiner.engines[refiner.family.denoiser.component]
    guider = guider_for(engine, request, resolved.guided, [])
    with timings.stage(TEXT_ENCODER):
        conditioning = encode_conditioning(refiner.text_encoders, refiner.engines, resolved, guider, [], timings)
    if not switches_mid_run(base.sampler) and (_a1111(base.sampler) or getattr(base.sampler, "adaptive", False)):
        raise GenerationError(
            f"a refiner runs with A1111's k-diffusion samplers of fixed steps and with diffusers' samplers, "
            f"not {request.sampler}",
            "sampler",
        )
    if switches_mid_run(base.sampler):  # A1111's: one sampler run, the model swapped at a call
        switch = a1111_switch_call(base.sampler, base.start.first, switch_at)
        base.start.end, sampler = switch, base.sampler
        start = DenoiseStart(None, switch, counted_from=base.start.first)
    else:  # diffusers' ensemble: the refiner's own sampler over the schedule's tail
        base.start.end = base_end(base.sampler, base.start.first, switch_at)
        sampler = refiner.new_sampler(request)
        start = DenoiseStart(None, refiner_start(sampler, switch_at), counted_from=base.start.first)
    return Stage(
        EngineDenoiser(engine, refiner.family.denoiser), sampler, conditioning, guider, start, refiner.decode_latents
    )
