"""Previews during denoising: every N steps the current latents are decoded, with the tiny VAE
when the export has one (sdrt.export.tiny_vae: a few milliseconds) and the full VAE otherwise,
and handed to a callback (the CLI writes them as PNGs)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from sdrt.errors import GenerationError
from sdrt.runtime.loop.context import StepContext
from sdrt.runtime.loop.hooks import StepHook
from sdrt.runtime.loop.timings import PREVIEWS

PIXEL_LEVELS = 255


@dataclass(frozen=True)
class Preview:
    """`callback(step, total, images)` after every `every`-th step but the last."""

    every: int
    callback: Callable[[int, int, list[Image.Image]], None]

    def __post_init__(self):
        if not isinstance(self.every, int) or isinstance(self.every, bool) or self.every < 1:
            raise GenerationError(f"previews need a positive step interval, got {self.every!r}", "preview")

    def hook(self, pipeline) -> PreviewHook:
        """The step hook that decodes and hands over the latents (the tiny VAE when exported)."""
        decoder = "tiny" if pipeline.manifest.tiny_vae is not None else "full"
        return PreviewHook(self, lambda latents: pipeline.decode_latents(latents, decoder))


class PreviewHook(StepHook):
    def __init__(self, preview: Preview, decode: Callable[[np.ndarray], np.ndarray]):
        self.preview, self.decode = preview, decode

    def after_step(self, ctx: StepContext, latents: np.ndarray) -> np.ndarray:
        step, total = ctx.completed, ctx.total
        if step % self.preview.every or step >= total:
            return latents
        with ctx.timings.stage(PREVIEWS):
            array = self.decode(latents)
            images = [Image.fromarray((image * PIXEL_LEVELS).round().astype(np.uint8)) for image in array]
        self.preview.callback(step, total, images)
        return latents
