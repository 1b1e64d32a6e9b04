"""Step hooks: the one way a feature attaches to the denoising loop.

A hook may add feeds to each denoiser call (ControlNet's residuals: `extra_feeds`, its time
going to the measure `feeds_measure`) and may act after each step, returning the latents the
loop goes on with (the inpainting blend replaces the kept region; previews and progress only
look). Hooks of a stage run before the run-wide ones, in order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from sdrt.runtime.loop.context import StepContext


@dataclass(frozen=True)
class ModelCall:
    """One denoiser engine call of a step: the batch rows it covers (None: all, in order), the
    denoiser's input for them, the scaled latents before any extra channels (what ControlNets
    see), the timestep and the conditioning feeds."""

    rows: np.ndarray | None
    sample: np.ndarray
    scaled: np.ndarray
    timestep: np.ndarray
    feeds: dict[str, np.ndarray]


class StepHook:
    """A feature in the loop; override what it needs (the defaults change nothing)."""

    #: The per-call measure (sdrt.runtime.loop.timings) of this hook's extra feeds; None: it adds none.
    feeds_measure: ClassVar[str | None] = None

    def extra_feeds(self, ctx: StepContext, call: ModelCall) -> dict[str, np.ndarray]:
        return {}

    def after_step(self, ctx: StepContext, latents: np.ndarray) -> np.ndarray:
        return latents


class ProgressHook(StepHook):
    """`callback(steps done, steps in all)` after each step."""

    def __init__(self, callback: Callable[[int, int], None]):
        self.callback = callback

    def after_step(self, ctx: StepContext, latents: np.ndarray) -> np.ndarray:
        self.callback(ctx.completed, ctx.total)
        return latents
