"""SDXL's conditioning, as diffusers' `StableDiffusionXLPipeline` (and its image-to-image and
inpainting pipelines) compute it.

- Text (sdrt.runtime.text.encoders, sdrt.runtime.loop.conditioning): both encoders' penultimate
  hidden states concatenated, the pooled embedding from the last encoder. With guidance and no
  negative prompt, a model whose config sets `force_zeros_for_empty_prompt` gets zeros as its
  negative conditioning (hidden and pooled). A negative prompt of "" is encoded like any other.
- `time_ids`: (original size, crop top-left, target size), or for a model that
  `requires_aesthetics_score` (the refiner) (original size, crop top-left, aesthetic score);
  sizes are (height, width) and default to the image's size. The negative row uses the
  negative_* values, each defaulting to its positive counterpart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from sdrt.errors import GenerationError
from sdrt.runtime.manifest import TIME_IDS

if TYPE_CHECKING:  # the request module imports this one
    from sdrt.runtime.manifest import SdxlSpec
    from sdrt.runtime.request import ResolvedRequest

#: diffusers' default aesthetic scores for the refiner's conditioning.
AESTHETIC_SCORE, NEGATIVE_AESTHETIC_SCORE = 6.0, 2.5
#: Larger sizes than any model was trained on; bounds what a request can ask for.
MAX_CONDITIONING_SIZE = 16384
Pair = tuple[int, int]


@dataclass(frozen=True)
class SizeConditioning:
    """SDXL's micro-conditioning of one request (diffusers' parameters, (height, width) and
    (top, left) pairs). None sizes are the image's size; negative values default to positive."""

    original_size: Pair | None = None
    crop_top_left: Pair = (0, 0)
    target_size: Pair | None = None
    negative_original_size: Pair | None = None
    negative_crop_top_left: Pair | None = None
    negative_target_size: Pair | None = None
    aesthetic_score: float = AESTHETIC_SCORE
    negative_aesthetic_score: float = NEGATIVE_AESTHETIC_SCORE

    def check(self) -> None:
        for name in ("original_size", "target_size", "negative_original_size", "negative_target_size",
                     "crop_top_left", "negative_crop_top_left"):
            _check_pair(name, getattr(self, name), low=0 if "crop" in name else 1)
        for name in ("aesthetic_score", "negative_aesthetic_score"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise GenerationError(f"{name} must be a finite number, got {value!r}", name)

    def time_ids(self, height: int, width: int, aesthetic: bool) -> tuple[list[float], list[float]]:
        """(negative, positive) rows of time ids for an image of this size."""
        original = self.original_size or (height, width)
        target = self.target_size or (height, width)
        negative_original = self.negative_original_size or original
        negative_target = self.negative_target_size or target
        negative_crop = self.negative_crop_top_left or self.crop_top_left
        if aesthetic:
            positive = [*original, *self.crop_top_left, self.aesthetic_score]
            negative = [*negative_original, *negative_crop, self.negative_aesthetic_score]
        else:
            positive = [*original, *self.crop_top_left, *target]
            negative = [*negative_original, *negative_crop, *negative_target]
        return [float(v) for v in negative], [float(v) for v in positive]


def _check_pair(name: str, value, low: int) -> None:
    if value is None:
        return
    ok = isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) and low <= v <= MAX_CONDITIONING_SIZE for v in value)
    if not ok:
        raise GenerationError(f"{name} must be two integers from {low} to {MAX_CONDITIONING_SIZE} "
                              f"(height, width), got {value!r}", name)


def time_id_rows(spec: SdxlSpec, resolved: ResolvedRequest) -> dict[str, dict[str, np.ndarray]]:
    """The `time_ids` feed of negative and positive rows."""
    negative, positive = (resolved.request.size_conditioning or SizeConditioning()).time_ids(
        resolved.height, resolved.width, spec.requires_aesthetics_score)
    return {"negative": {TIME_IDS: np.array(negative, np.float32)},
            "positive": {TIME_IDS: np.array(positive, np.float32)}}
