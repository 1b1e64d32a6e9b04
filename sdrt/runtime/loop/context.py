"""Where the denoising loop is, handed to the denoiser, the guider and every step hook: the
step's sampler index and timestep, the stage's range, the steps done and in all, the timings,
the random source of stochastic samplers and the caller's cancel token."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from sdrt.errors import SdrtError
from sdrt.runtime.loop.timings import Timings
from sdrt.runtime.rng import GeneratorGroup, TorchGenerator

if TYPE_CHECKING:
    from sdrt.runtime.features.preview import Preview


class GenerationCancelled(SdrtError):
    """The caller's cancel token was set: the generation stopped at a step boundary. `latents`:
    the sample after the last finished step (the loop sets them); `partial`, where the run can
    still give what it made so far, decodes them into a GenerationResult on request (A1111's
    interrupt answers with that image; other callers never pay for the decode)."""

    def __init__(self, message: str, latents: np.ndarray | None = None):
        super().__init__(message)
        self.latents = latents
        self.partial: Callable[[], Any] | None = None


@dataclass
class StepContext:
    """One generation's position in its loop; the loop updates it before each step."""

    generator: TorchGenerator | GeneratorGroup
    timings: Timings = field(default_factory=Timings)
    cancel: threading.Event | None = None
    total: int = 0  # steps of the whole run, every stage
    done: int = 0  # steps finished by the stages before the current one
    index: int = 0  # the sampler's call index of the current step
    first: int = 0  # the current stage's first call index
    end: int = 0  # the call index the current stage stops before
    timestep: float = 0.0

    @property
    def position(self) -> int:
        """The current step counted from the stage's first (DeepCache's full-step rule)."""
        return self.index - self.first

    @property
    def completed(self) -> int:
        """Steps of the whole run finished once the current step is (progress, previews)."""
        return self.done + self.index - self.first + 1

    def check_cancelled(self, latents: np.ndarray | None = None) -> None:
        """Raises GenerationCancelled, carrying `latents` (the current sample), once cancelled."""
        if self.cancel is not None and self.cancel.is_set():
            raise GenerationCancelled("the generation was cancelled", latents)


@dataclass(frozen=True)
class RunWatch:
    """How a caller follows a run: `progress(done, total)` after each step, a cancel token,
    previews. Outer wrappers (hires fix, masked area) hand it to each run they make."""

    progress: Callable[[int, int], None] | None = None
    cancel: threading.Event | None = None
    preview: Preview | None = None
