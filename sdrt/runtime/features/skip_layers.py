"""Skip-layer guidance (SD3.5 Medium's recommended setting), as StableDiffusion3Pipeline runs
it: on the steps i with steps * start < i < steps * stop of a classifier-free-guided run, the
transformer runs once more on the conditional rows with the given layers skipped (the
export's per-layer skip mask, the same weights), and the guided prediction moves by
(conditional - skipped) * scale. Without CFG (guidance <= 1) the pipeline applies none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sdrt.errors import GenerationError
from sdrt.runtime.loop.guiders import ClassifierFreeGuidance

PARAM = "skip_layer_guidance"
#: StableDiffusion3Pipeline's defaults (skip_layer_guidance_scale, _start, _stop).
DEFAULT_SCALE, DEFAULT_START, DEFAULT_STOP = 2.8, 0.01, 0.2
#: The skip mask's value for a skipped layer (sdrt.export.sd3.SKIPPED).
SKIPPED = 1.0


@dataclass(frozen=True)
class SkipLayerGuidance:
    layers: tuple[int, ...]  # diffusers' skip_guidance_layers (SD3.5 Medium: 7, 8, 9)
    scale: float = DEFAULT_SCALE
    start: float = DEFAULT_START  # fractions of the steps
    stop: float = DEFAULT_STOP

    def problem(self, layer_count: int | None) -> str | None:
        """What is wrong with these settings on a transformer of `layer_count` layers (None:
        a model without skippable layers)."""
        if layer_count is None:
            return "skip-layer guidance needs an SD3 transformer exported with its skip mask; this model has none"
        if not self.layers or any(not isinstance(i, int) or isinstance(i, bool) for i in self.layers):
            return "skip-layer guidance takes a non-empty list of layer indices"
        outside = [i for i in self.layers if not 0 <= i < layer_count]
        if outside:
            return f"skip-layer guidance layers {outside} are outside this transformer's 0..{layer_count - 1}"
        for name in ("scale", "start", "stop"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                return f"skip-layer guidance {name} must be a finite number, got {value!r}"
        if not 0 <= self.start <= self.stop <= 1:
            return f"skip-layer guidance needs 0 <= start <= stop <= 1, got {self.start} and {self.stop}"
        return None

    def check(self, layer_count: int | None) -> None:
        problem = self.problem(layer_count)
        if problem is not None:
            raise GenerationError(problem, PARAM)

    def mask(self, layer_count: int) -> np.ndarray:
        mask = np.zeros(layer_count, np.float32)
        mask[list(self.layers)] = SKIPPED
        return mask

    def active(self, step: int, steps: int) -> bool:
        """StableDiffusion3Pipeline's should_skip_layers at loop index `step`."""
        return steps * self.start < step < steps * self.stop


class SkipLayerGuider(ClassifierFreeGuidance):
    """CFG plus skip-layer guidance; the denoiser (sdrt.runtime.families.sd3_denoiser) makes the
    extra call on the steps it is active and leaves its prediction in `skipped`."""

    def __init__(self, scale: float, settings: SkipLayerGuidance, steps: int, layer_count: int):
        super().__init__(scale)
        self.settings = settings
        self.steps = steps
        self.mask = settings.mask(layer_count)
        self.skipped: np.ndarray | None = None

    def bind(self, denoiser) -> None:
        denoiser.skip_guidance = self

    def combine(self, prediction: np.ndarray) -> np.ndarray:
        guided = super().combine(prediction)
        if self.skipped is None:
            return guided
        conditional = np.split(prediction, 2)[1]
        skipped, self.skipped = self.skipped.astype(np.float32), None
        with np.errstate(over="ignore", invalid="ignore"):
            return guided + (conditional - skipped) * self.settings.scale
