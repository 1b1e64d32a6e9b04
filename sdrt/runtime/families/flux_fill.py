"""FLUX.1 Fill, as diffusers' `FluxFillPipeline` runs it: the transformer takes, beside the
latents, the masked image's latents and the mask as extra input channels (after 2x2 packing:
64 latent + 64 masked image + 256 mask on the real model). The mask keeps its full resolution:
each VAE cell's vae_scale_factor^2 pixels become that many channels of the latent grid
(prepare_mask_latents). Packing is per channel, so packing [latents; masked; mask cells] in one
go is the pipeline's concatenation of the three packed tensors; the loop appends the two as the
mode's `channels` (sdrt.runtime.loop.modes.DenoiseStart) and the packed denoiser packs them all.

The generator draws in the pipeline's order: the image's latents (always: prepare_latents
encodes the image at every strength), the noise, then the masked image's latents.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sdrt.runtime.imaging.inputs import MASK_THRESHOLD, to_mask_input, to_model_input

if TYPE_CHECKING:
    from sdrt.runtime.loop.modes import DenoiseStart, ImageEncoder
    from sdrt.runtime.request_resolve import ResolvedRequest
    from sdrt.runtime.schedulers import Scheduler


def mask_cells(mask: np.ndarray, cell: int) -> np.ndarray:
    """[b, 1, H, W] pixels -> [b, cell * cell, H / cell, W / cell]: each cell's pixels as
    channels, in (row, column) order within the cell."""
    b, _, height, width = mask.shape
    rows, columns = height // cell, width // cell
    cells = mask[:, 0].reshape(b, rows, cell, columns, cell).transpose(0, 2, 4, 1, 3)
    return cells.reshape(b, cell * cell, rows, columns)


def fill_mode(vae_scale_factor: int, first_step):
    """The Fill mode (sdrt.runtime.loop.modes.Mode) for latents `vae_scale_factor` times smaller
    than the image; `first_step(resolved, sampler)` is the call its strength starts from."""

    def start(
        resolved: ResolvedRequest, sampler: Scheduler, generator, shape: tuple[int, ...], encode: ImageEncoder
    ) -> DenoiseStart:
        from sdrt.runtime.loop.modes import DenoiseStart

        assert resolved.image is not None and resolved.mask is not None  # Flux.check_request: Fill needs both
        batch = shape[0]
        first = first_step(resolved, sampler)
        pixels = to_model_input(resolved.image, resolved.height, resolved.width)
        mask = to_mask_input(resolved.mask, resolved.image, resolved.height, resolved.width)
        image_latents = np.concatenate([encode(pixels, generator)] * batch)
        latents = sampler.add_noise(image_latents, generator.randn(shape), first)
        masked = encode(pixels * (mask < MASK_THRESHOLD), generator)
        channels = np.concatenate([masked, mask_cells(mask, vae_scale_factor)], axis=1)
        return DenoiseStart(latents, first, channels=np.concatenate([channels] * batch))

    return start
