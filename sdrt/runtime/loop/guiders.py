"""How the denoiser's predictions are guided by the prompt (diffusers' pipelines' rules).

- ClassifierFreeGuidance: the latents run twice, [unconditional; conditional], and the
  predictions combine as u + scale * (c - u);
- GuidanceEmbedding: a latent consistency model distilled with guidance takes the scale as a
  conditioning feed (`timestep_cond`, sdrt.runtime.loop.guidance_embedding) on one batch;
- NoGuidance: one batch, the prediction as it is (guidance scale <= 1).
"""

from __future__ import annotations

from typing import cast

import numpy as np

from sdrt.runtime.engines import Engine
from sdrt.runtime.loop.guidance_embedding import guidance_embedding
from sdrt.runtime.manifest import TIMESTEP_COND

#: Samplers for consistency-distilled models (LCM, TCD), and the guidance their LoRAs are made for.
CONSISTENCY_SAMPLERS = ("lcm", "tcd")
CONSISTENCY_GUIDANCE_MAX = 2.0


class NoGuidance:
    #: Whether the conditioning has unconditional rows (the first half of the batch).
    unconditional = False

    def model_latents(self, latents: np.ndarray) -> np.ndarray:
        """The latents as the denoiser's batch."""
        return latents

    def combine(self, prediction: np.ndarray) -> np.ndarray:
        """The guided prediction from the denoiser's float32 output."""
        return prediction

    def row_feeds(self) -> dict[str, np.ndarray]:
        """Feeds every conditional row gets."""
        return {}

    def bind(self, denoiser) -> None:
        """The stage's denoiser, for a guider that calls it too (SD3's skip-layer guidance)."""


class ClassifierFreeGuidance(NoGuidance):
    unconditional = True

    def __init__(self, scale: float):
        self.scale = scale

    def model_latents(self, latents: np.ndarray) -> np.ndarray:
        return np.concatenate([latents, latents])

    def combine(self, prediction: np.ndarray) -> np.ndarray:
        unconditional, conditional = np.split(prediction, 2)
        # A huge scale overflows to inf here; the decoded image's NaN check reports it, once.
        with np.errstate(over="ignore", invalid="ignore"):
            return unconditional + self.scale * (conditional - unconditional)


class GuidanceEmbedding(NoGuidance):
    def __init__(self, scale: float, width: int):
        self.embedding = guidance_embedding(float(scale), width)

    def row_feeds(self) -> dict[str, np.ndarray]:
        return {TIMESTEP_COND: self.embedding}


def guider_for(denoiser: Engine | None, request, guided: bool, warnings: list[str]) -> NoGuidance:
    """The request's guider on this denoiser, with warnings about settings it ignores."""
    embedding_input = denoiser.inputs.get(TIMESTEP_COND) if denoiser is not None else None
    if embedding_input is not None:  # an LCM-distilled UNet: guidance through an embedding, no unconditional half
        if request.negative_prompt is not None:
            warnings.append(
                "this latent consistency model takes no negative prompt (guidance is built in): it was not used"
            )
        width = cast(int, embedding_input.shape[1])  # a fixed size (the exporter's), not a named dim
        return GuidanceEmbedding(request.guidance_scale, width)
    if request.sampler in CONSISTENCY_SAMPLERS and request.guidance_scale > CONSISTENCY_GUIDANCE_MAX:
        warnings.append(
            f"the {request.sampler} sampler on a UNet that is not consistency-distilled runs classifier-free "
            f"guidance at {request.guidance_scale:g} (two UNet batches a step); LCM/TCD-LoRAs are made "
            f"for guidance 1 to {CONSISTENCY_GUIDANCE_MAX:g}, and without such a LoRA few steps stay noisy"
        )
    return ClassifierFreeGuidance(request.guidance_scale) if guided else NoGuidance()
