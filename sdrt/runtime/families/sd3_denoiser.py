"""SD3's transformer as the loop's denoiser: each call feeds the export's per-layer skip mask
(sdrt.runtime.sd3_spec.SKIP_LAYERS), which skip-layer guidance sets for its extra call."""

from __future__ import annotations

import numpy as np

from sdrt.runtime.engines import Engine
from sdrt.runtime.families.base import DenoiserCall
from sdrt.runtime.loop.context import StepContext
from sdrt.runtime.loop.denoiser import EngineDenoiser
from sdrt.runtime.sd3_spec import SKIP_LAYERS


class SkipMaskDenoiser(EngineDenoiser):
    """The SD3 transformer as a denoiser: every call feeds its per-layer skip mask, no layer
    skipped unless `skip` is set (skip-layer guidance's extra call)."""

    def __init__(self, engine: Engine, names: DenoiserCall, layers: int):
        super().__init__(engine, names)
        self.no_skip = np.zeros(layers, self.dtypes[SKIP_LAYERS])
        self.skip: np.ndarray | None = None

    def run(self, ctx: StepContext, position: int, inputs: dict[str, np.ndarray]) -> np.ndarray:
        mask = self.no_skip if self.skip is None else self.skip.astype(self.no_skip.dtype)
        return self.engine.run({**inputs, SKIP_LAYERS: mask})[self.names.output]
