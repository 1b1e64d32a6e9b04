"""FLUX.1 Kontext, as diffusers' `FluxKontextPipeline` runs it: the request's image is a
reference, not a start. Its latents (the VAE encoder's mean: sample_mode="argmax", nothing
drawn) are packed and joined after the image's tokens on every call, with position ids whose
first component is 1 (sdrt.runtime.families.flux_latents); the generated latents start from pure
noise at every step count, and the prediction keeps the image's tokens only. The sampler's shift
counts the generated image's tokens alone, as the pipeline's `image_seq_len`.

Sizes, as the pipeline chooses them (sdrt.runtime.families.flux_kontext_sizes): the reference at
the preferred resolution nearest its aspect ratio (`kontext_auto_resize`, on by default), else at
its own size rounded down to a multiple of 16; the output at `kontext_max_area` pixels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import numpy as np

from sdrt.errors import GenerationError
from sdrt.runtime.families.flux_kontext_sizes import auto_resize, reference_size
from sdrt.runtime.families.flux_latents import PATCH, REFERENCE_LATENTS
from sdrt.runtime.imaging.inputs import to_model_input
from sdrt.runtime.loop.hooks import ModelCall, StepHook
from sdrt.runtime.loop.timings import REFERENCE_TOKENS

if TYPE_CHECKING:
    from sdrt.runtime.loop.context import StepContext
    from sdrt.runtime.loop.modes import DenoiseStart, ImageEncoder
    from sdrt.runtime.request_resolve import ResolvedRequest
    from sdrt.runtime.rng import TorchGenerator
    from sdrt.runtime.schedulers import Scheduler


class EncoderMean:
    """A generator whose draws are zeros: the VAE encoder's latents become its mean."""

    def randn(self, shape) -> np.ndarray:
        return np.zeros(shape, np.float32)


class ReferenceTokens(StepHook):
    """The reference's latents on every denoiser call, one copy per row of the call."""

    feeds_measure = REFERENCE_TOKENS

    def __init__(self, latents: np.ndarray):
        self.latents = latents

    def extra_feeds(self, ctx: StepContext, call: ModelCall) -> dict[str, np.ndarray]:
        return {REFERENCE_LATENTS: np.repeat(self.latents, len(call.sample), axis=0)}


def kontext_mode(vae_scale_factor: int, multiple: int, max_tokens: int):
    """The Kontext mode (sdrt.runtime.loop.modes.Mode): `multiple` is the image sides' step,
    `max_tokens` the transformer's image_tokens limit (the image's and the reference's)."""

    def start(
        resolved: ResolvedRequest, sampler: Scheduler, generator, shape: tuple[int, ...], encode: ImageEncoder
    ) -> DenoiseStart:
        from sdrt.runtime.loop.modes import DenoiseStart

        image = resolved.image
        assert image is not None  # Flux.check_request: Kontext needs its reference image
        height, width = image.height - image.height % multiple, image.width - image.width % multiple
        cell = vae_scale_factor * PATCH
        if min(height, width) < multiple:
            size = f"{image.width}x{image.height}"
            raise GenerationError(f"the reference image is {size}, under {multiple} pixels a side", "init_image")
        height, width = reference_size(height, width, auto_resize(resolved.request), multiple)
        tokens = (height // cell) * (width // cell) + (resolved.height // cell) * (resolved.width // cell)
        if tokens > max_tokens:
            raise GenerationError(
                f"the reference image ({width}x{height}) and the output ({resolved.width}x{resolved.height}) make "
                f"{tokens} image tokens, over this export's {max_tokens}: give a smaller image or size",
                "init_image",
            )
        # The encoder draws only through `randn`: zeros give the distribution's mean.
        reference = encode(to_model_input(image, height, width), cast("TorchGenerator", EncoderMean()))
        noise = generator.randn(shape) * np.float32(sampler.init_noise_sigma)
        return DenoiseStart(noise, 0, hooks=[ReferenceTokens(reference)])

    return start
