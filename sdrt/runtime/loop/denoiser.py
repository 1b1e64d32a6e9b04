"""The denoiser: one model call for a batch of latents at one step, whatever the family.

`EngineDenoiser` runs the family's denoiser engine (sdrt.runtime.families: its component and
tensor names) once per call of the step's conditioning (sdrt.runtime.loop.conditioning: one
call, or one per text length; sdrt.runtime.loop.regional: calls on windows of their rows, the
rest zeros), each call with the extra feeds of the step hooks (ControlNet
residuals; a UNet with residual inputs that gets none feeds zeros, sdrt.runtime.engines.base).
Step caches (DeepCache) subclass it and override `run`, reading the step from the context; the
transformer families' step caches (sdrt.runtime.features.step_caches) take over `call_engine`
through `step_cache` instead, so the family's own feeds (FLUX's packing) stay as they are.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from sdrt.runtime.engines import Engine
from sdrt.runtime.families import DenoiserCall
from sdrt.runtime.loop.context import StepContext
from sdrt.runtime.loop.hooks import ModelCall, StepHook
from sdrt.runtime.loop.windows import crop, paste


class EngineDenoiser:
    def __init__(self, engine: Engine, names: DenoiserCall):
        self.engine = engine
        self.names = names
        self.spec = engine.spec
        self.sample_dtype = engine.input_dtype(names.sample)
        self.timestep_dtype = engine.input_dtype(names.timestep)
        self.dtypes = {name: engine.input_dtype(name) for name in engine.inputs}
        #: A step cache's run (sdrt.runtime.features.step_caches) that makes each call's output; None: the engine.
        self.step_cache = None

    @property
    def copies_to_device(self) -> bool:
        return self.engine.copies_to_device

    @property
    def last_copy_seconds(self) -> float:
        return self.engine.last_copy_seconds

    def predict(
        self,
        ctx: StepContext,
        model_input: np.ndarray,
        scaled: np.ndarray,
        timestep: np.ndarray,
        calls: list,
        hooks: Sequence[StepHook],
    ) -> tuple[np.ndarray, list[float]]:
        """(the prediction for every row, each feeding hook's seconds). `scaled` is the scaled
        latents before an inpainting denoiser's extra channels (what ControlNets see)."""
        seconds = [0.0] * len(hooks)

        def one(position: int, rows, feeds, windows=None) -> np.ndarray:
            pick = (lambda a: a) if rows is None else (lambda a: a[rows])
            if windows is not None:  # each row's window of the latents (sdrt.runtime.loop.regional)
                pick = lambda a: crop(a, rows, windows)  # noqa: E731
            call = ModelCall(rows, pick(model_input), pick(scaled), timestep, feeds)
            added: dict[str, np.ndarray] = {}
            for index, hook in enumerate(hooks):
                began = time.perf_counter()
                added.update(hook.extra_feeds(ctx, call))
                seconds[index] += time.perf_counter() - began
            inputs = {self.names.sample: call.sample, self.names.timestep: timestep, **feeds, **added}
            return self.run(ctx, position, inputs)

        if len(calls) == 1 and len(calls[0]) == 2:
            return one(0, *calls[0]), seconds
        parts = [(call, one(position, *call)) for position, call in enumerate(calls)]
        if not parts:  # no conditioning at this call's noise level: zeros, as calc_cond_batch's sums
            return np.zeros(scaled.shape, np.float32), seconds
        first = parts[0][1]
        if any(len(call) > 2 for call in calls):  # windows: the latents' size, zeros where no call covers
            prediction = np.zeros((len(model_input), first.shape[1], *model_input.shape[2:]), first.dtype)
        else:
            prediction = np.empty((len(model_input), *first.shape[1:]), first.dtype)
        for call, part in parts:
            if len(call) > 2:
                paste(prediction, call[0], call[2], part)
            else:
                prediction[call[0]] = part
        return prediction, seconds

    def run(self, ctx: StepContext, position: int, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """One engine call: the `position`-th call of the step."""
        return self.call_engine(ctx, position, inputs)

    def call_engine(self, ctx: StepContext, position: int, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The denoiser's output for the engine's feeds: the engine's, or the step cache's."""
        if self.step_cache is not None:
            return self.step_cache.run(ctx, position, feeds)
        return self.engine.run(feeds)[self.names.output]
