"""SD3's transformer as the loop's denoiser: each call feeds the export's per-layer skip mask
(sdrt.runtime.sd3_spec.SKIP_LAYERS), which skip-layer guidance sets for its extra call."""

from __future__ import annotations

import numpy as np

from sdrt.runtime.engines import Engine
from sdrt.runtime.families.base import DenoiserCall
from sdrt.runtime.loop.context import StepContext
from sdrt.runtime.loop.denoiser import EngineDenoiser
from sdrt.runtime.manifest import POOLED_PROJECTIONS, UNET_CONTEXT
from sdrt.runtime.sd3_spec import SKIP_LAYERS

#: The conditioning feeds with one row per latent row (the rest, if any, are shared).
PER_ROW_FEEDS = (UNET_CONTEXT, POOLED_PROJECTIONS)


class SkipMaskDenoiser(EngineDenoiser):
    """The SD3 transformer as a denoiser: every call feeds its per-layer skip mask, no layer
    skipped unless `skip` is set (skip-layer guidance's extra call)."""

    def __init__(self, engine: Engine, names: DenoiserCall, layers: int):
        super().__init__(engine, names)
        self.no_skip = np.zeros(layers, self.dtypes[SKIP_LAYERS])
        self.skip: np.ndarray | None = None
        self.skip_guidance = None  # a SkipLayerGuider binds itself here

    def predict(self, ctx: StepContext, model_input, scaled, timestep, calls, hooks):
        """The step's prediction; on skip-layer guidance's steps, the conditional half's
        prediction with its layers skipped is left in the guider (diffusers' extra call)."""
        prediction, seconds = super().predict(ctx, model_input, scaled, timestep, calls, hooks)
        guidance = self.skip_guidance
        if guidance is not None and guidance.settings.active(ctx.index, guidance.steps):
            (rows, feeds), half = calls[0], len(model_input) // 2
            if len(calls) != 1 or rows is not None:
                raise ValueError("skip-layer guidance needs the step's rows in one call")
            inputs = {name: value[half:] if name in PER_ROW_FEEDS else value for name, value in feeds.items()}
            inputs.update({self.names.sample: model_input[half:], self.names.timestep: timestep})
            self.skip = guidance.mask
            try:
                guidance.skipped = self.run(ctx, 0, inputs)
            finally:
                self.skip = None
        return prediction, seconds

    def run(self, ctx: StepContext, position: int, inputs: dict[str, np.ndarray]) -> np.ndarray:
        if self.skip is None:  # the step's own call: the step cache's, if any
            return self.call_engine(ctx, position, {**inputs, SKIP_LAYERS: self.no_skip})
        # skip-layer guidance's extra call (no step cache runs with it: sdrt.runtime.features.combinations)
        return self.engine.run({**inputs, SKIP_LAYERS: self.skip.astype(self.no_skip.dtype)})[self.names.output]
