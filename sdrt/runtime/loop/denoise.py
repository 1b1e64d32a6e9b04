"""The denoising loop: its stages in turn, each step the guider's batch, the sampler's scaled
input, one denoiser prediction (with the hooks' extra feeds), guidance, the sampler's step and
the hooks after it; timings, cancellation and the step index in one StepContext.

    with guidance:  model input = scale([latents; latents]) (+ the mode's channels)
                    prediction  = u + scale * (c - u)
                    latents     = sampler.step(prediction, index, latents)

Stochastic samplers draw from the context's generator, after the initial latents, as diffusers.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from sdrt.runtime.loop.context import StepContext
from sdrt.runtime.loop.hooks import StepHook
from sdrt.runtime.loop.stage import Stage
from sdrt.runtime.loop.timings import UNET_HOST_COPIES, UNET_STEPS


def denoise(stages: Sequence[Stage], ctx: StepContext, hooks: Sequence[StepHook] = ()) -> np.ndarray:
    """The final latents of every stage run in turn; `hooks` run after each step of all of
    them, after each stage's own (progress, previews). A stage without initial latents
    continues from the previous stage's."""
    ctx.total = sum(stage.steps for stage in stages)
    ctx.done = 0
    latents: np.ndarray | None = None
    for stage in stages:
        if stage.start.latents is None:
            stage.start.latents = latents
        latents = run_stage(stage, ctx, [*stage.step_hooks, *hooks])
        ctx.done += stage.steps
    if latents is None:
        raise ValueError("denoise() needs at least one stage")
    return latents


def run_stage(stage: Stage, ctx: StepContext, hooks: Sequence[StepHook]) -> np.ndarray:
    start, sampler, denoiser, guider = stage.start, stage.sampler, stage.denoiser, stage.guider
    if start.latents is None:
        raise ValueError("a stage needs initial latents, or a stage before it that gives them")
    latents = start.latents
    measured = [(hook, hook.feeds_measure) for hook in hooks if hook.feeds_measure is not None]
    feeding = [hook for hook, _ in measured]
    unet_steps = ctx.timings.calls(UNET_STEPS)
    counted_from = start.first if start.counted_from is None else start.counted_from
    ctx.first, ctx.end = start.first, stage.end
    channels = None if start.channels is None else guider.model_latents(start.channels)
    index, end = start.first, stage.end
    while index < stage.end:  # re-read: an adaptive sampler lays out its next call as it runs
        ctx.index = index
        ctx.timestep = float(sampler.timesteps[index])
        ctx.check_cancelled(latents)
        scaled = sampler.scale_model_input(guider.model_latents(latents), index)
        model_input = scaled
        if channels is not None:
            model_input = np.concatenate([model_input, channels], axis=1)
        with np.errstate(over="ignore"):  # latents past fp16's range: inf, reported by the VAE's NaN check
            model_input = model_input.astype(denoiser.sample_dtype)
        timestep = np.array([sampler.timesteps[index]], dtype=denoiser.timestep_dtype)
        calls = stage.conditioning.calls(index - counted_from, denoiser.dtypes)
        called = time.perf_counter()
        prediction, hook_seconds = denoiser.predict(ctx, model_input, scaled, timestep, calls, feeding)
        unet_steps.append(time.perf_counter() - called - sum(hook_seconds))
        for (_, measure), seconds in zip(measured, hook_seconds):
            ctx.timings.call(measure, seconds)
        if denoiser.copies_to_device:
            ctx.timings.add(UNET_HOST_COPIES, denoiser.last_copy_seconds)
        prediction = prediction.astype(np.float32)
        if getattr(sampler, "takes_unconditional", False) and guider.unconditional:  # A1111's DDIM CFG++
            sampler.unconditional = np.split(prediction, 2)[0]  # type: ignore[attr-defined]
        prediction = guider.combine(prediction)
        latents = sampler.step(prediction, index, latents, generator=ctx.generator)
        if stage.end != end:  # the calls an adaptive sampler added count in the run's total
            ctx.total, end = ctx.total + stage.end - end, stage.end
            ctx.end = end
        for hook in hooks:
            latents = hook.after_step(ctx, latents)
        index += 1
    return latents
