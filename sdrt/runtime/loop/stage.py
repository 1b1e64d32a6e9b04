"""A stage: one model's run over a range of the sampler's calls. Text-to-image, image-to-image
and inpainting are one stage; SDXL's base + refiner are two, the second continuing from the
first's latents (sdrt.runtime.features.refiner)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from sdrt.runtime.loop.conditioning import Conditioning
from sdrt.runtime.loop.denoiser import EngineDenoiser
from sdrt.runtime.loop.guiders import NoGuidance
from sdrt.runtime.loop.hooks import StepHook
from sdrt.runtime.loop.modes import DenoiseStart
from sdrt.runtime.schedulers import Scheduler

#: (latents, decoder name) -> images float32 [batch, height, width, 3] in [0, 1].
Decode = Callable[[np.ndarray, str], np.ndarray]


@dataclass
class Stage:
    denoiser: EngineDenoiser
    sampler: Scheduler
    conditioning: Conditioning
    guider: NoGuidance
    start: DenoiseStart
    decode: Decode  # the stage's model's VAE (the last stage's decodes the result)
    hooks: list[StepHook] = field(default_factory=list)  # besides the mode's (start.hooks)

    @property
    def end(self) -> int:
        """The sampler call this stage stops before."""
        return len(self.sampler.timesteps) if self.start.end is None else self.start.end

    @property
    def steps(self) -> int:
        return self.end - self.start.first

    @property
    def step_hooks(self) -> list[StepHook]:
        return [*self.start.hooks, *self.hooks]
