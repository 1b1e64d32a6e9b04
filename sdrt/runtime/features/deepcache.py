"""DeepCache (step caching, opt-in): on a full step the UNet also returns its deep feature; on
the cached steps between, only the shallow graph runs (sdrt.export.deepcache), on that feature.
A step is full when its position, counted from the first denoising step, is a multiple of the
interval: the `deepcache` package's DeepCacheSDHelper rule (it finds a call's step as the position
of its timestep in the sampler's list; the loop's context gives the step's index itself).
Samplers with two UNet calls a step (Heun) are refused. Branch 0 only: the graphs of deeper
branches are not exported."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sdrt.runtime.engines import Engine
from sdrt.runtime.families import DenoiserCall
from sdrt.runtime.loop.context import StepContext
from sdrt.runtime.loop.denoiser import EngineDenoiser
from sdrt.runtime.manifest import DEEP_FEATURE, UNET, UNET_SHALLOW, Manifest

EXPORTED_BRANCHES = (0,)
MAX_INTERVAL = 100


@dataclass(frozen=True)
class DeepCache:
    interval: int
    branch: int = 0

    @classmethod
    def parse(cls, text: str) -> DeepCache:
        """ "INTERVAL[:BRANCH]" (ValueError with what is wrong)."""
        interval, _, branch = str(text).partition(":")
        try:
            made = cls(int(interval), int(branch) if branch else 0)
        except ValueError:
            raise ValueError(f"DeepCache takes INTERVAL[:BRANCH] in whole numbers, got {text!r}") from None
        if made.problem():
            raise ValueError(made.problem())
        return made

    def problem(self, manifest: Manifest | None = None) -> str | None:
        if not isinstance(self.interval, int) or not 1 <= self.interval <= MAX_INTERVAL:
            return f"the DeepCache interval must be a whole number from 1 to {MAX_INTERVAL}, got {self.interval!r}"
        if self.branch not in EXPORTED_BRANCHES:
            return f"DeepCache branch {self.branch} is not exported; sdrt exports branch 0 (the shallowest)"
        if manifest is not None and (
            UNET_SHALLOW not in manifest.components
            or DEEP_FEATURE not in {t.name for t in manifest.components[UNET].outputs}
        ):
            return "this export has no DeepCache graphs: re-export it with `sdrt export --deepcache`"
        return None


class StepCachedDenoiser(EngineDenoiser):
    """The denoiser of one generation with DeepCache: full steps run the UNet and keep its deep
    feature (one per call of the step: one per text length, sdrt.runtime.loop.conditioning),
    the steps between run the shallow graph on it."""

    def __init__(self, full: Engine, shallow: Engine, names: DenoiserCall, interval: int):
        super().__init__(full, names)
        self.shallow, self.interval = shallow, interval
        self.features: dict[int, np.ndarray] = {}

    def run(self, ctx: StepContext, position: int, inputs: dict[str, np.ndarray]) -> np.ndarray:
        if ctx.position % self.interval == 0 or position not in self.features:
            outputs = self.engine.run(inputs)
            self.features[position] = outputs[DEEP_FEATURE]
            return outputs[self.names.output]
        shallow = {name: inputs[name] for name in self.shallow.inputs if name != DEEP_FEATURE}
        return self.shallow.run({**shallow, DEEP_FEATURE: self.features[position]})[self.names.output]
