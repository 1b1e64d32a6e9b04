"""The denoising loop (Pipeline.denoise): UNet calls from a mode's start to its end, guidance,
the sampler's step and the mode's blend, with timings, cancellation and a per-step hook."""

from __future__ import annotations

import threading
import time
from typing import Callable

import numpy as np

from sdrt.errors import SdrtError
from sdrt.runtime.loop.conditioning import UnetConditioning
from sdrt.runtime.engines import Engine
from sdrt.runtime.loop.modes import DenoiseStart
from sdrt.runtime.schedulers import Scheduler
from sdrt.runtime.loop.denoiser import predict


class GenerationCancelled(SdrtError):
    """The caller's cancel token was set: the generation stopped at a step boundary."""


def denoise_loop(engine: Engine, start: DenoiseStart, conditioning: UnetConditioning, sampler: Scheduler,
                 guidance_scale: float, generator, progress: Callable[[int, int], None] | None, timings: dict | None,
                 cancel: threading.Event | None, control, after_step) -> np.ndarray:
    """See Pipeline.denoise."""
    latents = start.latents
    guided = conditioning.guided
    sample_dtype = engine.input_dtype("sample")
    dtypes = {name: engine.input_dtype(name) for name in engine.inputs}
    unet_steps = timings.setdefault("unet_steps", []) if timings is not None else []
    end = start.stop(sampler)
    counted_from = start.start if start.counted_from is None else start.counted_from
    for index in range(start.start, end):
        if cancel is not None and cancel.is_set():
            raise GenerationCancelled("the generation was cancelled")
        scaled = sampler.scale_model_input(np.concatenate([latents, latents]) if guided else latents, index)
        model_input = scaled
        if start.conditioning is not None:
            model_input = np.concatenate([model_input, start.conditioning], axis=1)
        model_input = model_input.astype(sample_dtype)
        timestep = np.array([sampler.timesteps[index]], dtype=engine.input_dtype("timestep"))
        calls = conditioning.calls(index - counted_from, dtypes)
        called = time.perf_counter()
        prediction, control_seconds = predict(engine, index, model_input, scaled, timestep, calls, control)
        unet_steps.append(time.perf_counter() - called - control_seconds)
        if control is not None and timings is not None:
            timings.setdefault("controlnet_steps", []).append(control_seconds)
        if timings is not None and engine.copies_to_device:
            timings["unet_host_copies"] = timings.get("unet_host_copies", 0.0) + engine.last_copy_seconds
        prediction = prediction.astype(np.float32)
        if guided:
            unconditional, conditional = np.split(prediction, 2)
            prediction = unconditional + guidance_scale * (conditional - unconditional)
        latents = sampler.step(prediction, index, latents, generator=generator)
        if start.blend is not None:
            latents = start.blend(index, latents)
        if progress is not None:
            progress(index - start.start + 1, end - start.start)
        if after_step is not None:
            after_step(index - start.start + 1, end - start.start, latents)
    return latents
