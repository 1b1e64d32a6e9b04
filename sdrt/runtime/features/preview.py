"""Previews during denoising: every N steps the current latents are decoded, with the tiny VAE
when the export has one (sdrt.export.tiny_vae: a few milliseconds) and the full VAE otherwise,
and handed to a callback (the CLI writes them as PNGs)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

from sdrt.errors import GenerationError

PIXEL_LEVELS = 255


@dataclass(frozen=True)
class Preview:
    """`callback(step, total, images)` after every `every`-th step but the last."""

    every: int
    callback: Callable[[int, int, list[Image.Image]], None]

    def __post_init__(self):
        if not isinstance(self.every, int) or isinstance(self.every, bool) or self.every < 1:
            raise GenerationError(f"previews need a positive step interval, got {self.every!r}", "preview")

    def hook(self, pipeline, timings: dict) -> Callable[[int, int, np.ndarray], None]:
        """What the denoising loop calls after each step with (step, total, latents)."""
        decoder = "tiny" if pipeline.manifest.tiny_vae is not None else "full"

        def after_step(step: int, total: int, latents: np.ndarray) -> None:
            if step % self.every or step >= total:
                return
            began = time.perf_counter()
            array = pipeline.decode_latents(latents, decoder)
            images = [Image.fromarray((image * PIXEL_LEVELS).round().astype(np.uint8)) for image in array]
            timings["previews"] = timings.get("previews", 0.0) + time.perf_counter() - began
            self.callback(step, total, images)

        return after_step
