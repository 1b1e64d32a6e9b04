"""ZImagePipeline's classifier-free guidance options beside its scale:

- `cfg_truncation` t: on the steps whose normalized time (1000 - timestep) / 1000 is above t
  the prediction is the conditional one alone (the pipeline runs one batch there; the
  unconditional half is run here too and dropped, which gives the same values). The pipeline's
  default 1.0 truncates nothing;
- `cfg_normalization` k > 0: each image's guided prediction is scaled down to k times the norm
  of its conditional prediction when it is longer (the pipeline's default, off, is None here).
"""

from __future__ import annotations

import numpy as np

from sdrt.runtime.loop.guiders import ClassifierFreeGuidance

#: The pipeline's normalized time is (TRAIN_TIMESTEPS - t) / TRAIN_TIMESTEPS.
TRAIN_TIMESTEPS = 1000.0
#: ZImagePipeline's default cfg_truncation (no step is above it).
NO_TRUNCATION = 1.0


class ZImageGuidance(ClassifierFreeGuidance):
    """u + scale (c - u) (scale: the pipeline's guidance_scale + 1) with truncation and
    normalization; the denoiser (sdrt.runtime.families.zimage_tokens) reports each step's
    timestep through `bind`."""

    def __init__(self, scale: float, truncation: float | None = None, normalization: float | None = None):
        super().__init__(scale)
        self.truncation = NO_TRUNCATION if truncation is None else float(truncation)
        self.normalization = normalization or None
        self.timestep: float | None = None

    def bind(self, denoiser) -> None:
        denoiser.guidance = self

    def truncated(self) -> bool:
        if self.timestep is None:
            return False
        step_time = (np.float32(TRAIN_TIMESTEPS) - np.float32(self.timestep)) / np.float32(TRAIN_TIMESTEPS)
        return bool(step_time > self.truncation)

    def combine(self, prediction: np.ndarray) -> np.ndarray:
        conditional = np.split(prediction, 2)[1]
        if self.truncated():
            return conditional
        guided = super().combine(prediction)
        if self.normalization is None:
            return guided
        rows = len(guided)
        limit = np.linalg.norm(conditional.reshape(rows, -1), axis=1) * np.float32(self.normalization)
        norm = np.linalg.norm(guided.reshape(rows, -1), axis=1)
        factor = np.where(norm > limit, limit / np.where(norm > 0, norm, 1), 1).astype(np.float32)
        return guided * factor.reshape(rows, *([1] * (guided.ndim - 1)))
