"""DeepCache (step caching, opt-in): on a full step the UNet also returns its deep feature; on
the cached steps between, only the shallow graph runs (sdrt.export.deepcache), on that feature.
A step is full when its position, counted from the first denoising step, is a multiple of the
interval: the `deepcache` package's DeepCacheSDHelper rule (it finds a call's step as the position
of its timestep in the sampler's list). Samplers with two UNet calls a step (Heun) are refused.
Branch 0 only: the graphs of deeper branches are not exported."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from sdrt.runtime.manifest import DEEP_FEATURE, UNET_SHALLOW, Manifest

EXPORTED_BRANCHES = (0,)
MAX_INTERVAL = 100


@dataclass(frozen=True)
class DeepCache:
    interval: int
    branch: int = 0

    @classmethod
    def parse(cls, text: str) -> "DeepCache":
        """"INTERVAL[:BRANCH]" (ValueError with what is wrong)."""
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
        if manifest is not None and (UNET_SHALLOW not in manifest.components or
                                     DEEP_FEATURE not in {t.name for t in manifest.components["unet"].outputs}):
            return "this export has no DeepCache graphs: re-export it with `sdrt export --deepcache`"
        return None


class StepCachedUnet:
    """The UNet of one generation with DeepCache: looks like its Engine to the denoising loop."""

    def __init__(self, full, shallow, timesteps: np.ndarray, interval: int):
        self.full, self.shallow, self.interval = full, shallow, interval
        self.inputs, self.spec, self.name = full.inputs, full.spec, full.name
        self.copies_to_device = full.copies_to_device
        self.timesteps = np.asarray(timesteps, dtype=np.float32)
        self.start: int | None = None
        self.step: int | None = None
        self.call = 0  # calls within the step (one per text length: sdrt.runtime.loop.conditioning)
        self.features: dict[int, np.ndarray] = {}

    def input_dtype(self, name: str) -> np.dtype:
        return self.full.input_dtype(name)

    @property
    def last_copy_seconds(self) -> float:
        return self.full.last_copy_seconds

    def _position(self, timestep: np.ndarray) -> int:
        found = np.flatnonzero(self.timesteps == np.float32(np.asarray(timestep).reshape(-1)[0]))
        return int(found[0]) if len(found) else 0

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        step = self._position(feeds["timestep"])
        self.start = step if self.start is None else self.start
        self.call = self.call + 1 if step == self.step else 0
        self.step = step
        if (step - self.start) % self.interval == 0 or self.call not in self.features:
            outputs = self.full.run(feeds)
            self.features[self.call] = outputs[DEEP_FEATURE]
            return outputs
        shallow = {name: feeds[name] for name in self.shallow.inputs if name != DEEP_FEATURE}
        return self.shallow.run({**shallow, DEEP_FEATURE: self.features[self.call]})
