"""Image-to-image and inpainting with the k-diffusion samplers (and A1111's timestep samplers,
which start from alpha_bar instead: A1111TimestepSampler.noised_image), as A1111 runs them
(modules/processing.py StableDiffusionProcessingImg2Img, sd_samplers_kdiffusion.sample_img2img):

- the run is the tail of the schedule for the requested steps (KDiffusionSampler.start_at_strength);
- the initial latents are the image's latents plus the seeds' first noise times the tail's
  first level (A1111 draws that noise first: its rng.next(), as in text-to-image);
- the image's latents are the VAE posterior's mean: A1111 samples the posterior with torch's
  global generator, which no request seeds, so no seed reproduces its draw (the posterior's
  spread is small beside the latents);
- inpainting: the latent mask is the mask resized to the latents' size (Pillow's default
  bicubic) and rounded (A1111's mask_round); every denoised prediction, and the sampled
  latents, keep the image's latents outside it (CFGDenoiser's blend, mask_before_denoising off).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from sdrt.errors import ConfigError
from sdrt.runtime.imaging.inputs import MASK_THRESHOLD, downsample_nearest, mask_gray, to_mask_input, to_model_input
from sdrt.runtime.loop.modes import DenoiseStart, ImageEncoder
from sdrt.runtime.request import GenerationError
from sdrt.runtime.request_resolve import ResolvedRequest
from sdrt.runtime.schedulers.a1111_timesteps import A1111TimestepSampler
from sdrt.runtime.schedulers.kdiffusion.sampler import KDiffusionSampler

MAX_8BIT = 255


class PosteriorMean:
    """A generator whose draws are zeros: the VAE encoder's sample is then its posterior's mean."""

    @staticmethod
    def randn(shape) -> np.ndarray:
        return np.zeros(tuple(shape), dtype=np.float32)


def latent_mask(mask: Image.Image, height: int, width: int, latent_height: int, latent_width: int) -> np.ndarray:
    """A1111's latmask: the mask at the image's size, resized to the latents' (Pillow's default
    filter, bicubic), 0..1, rounded. float32 [1, 1, h, w], 1 = repaint."""
    gray = mask_gray(mask)
    if gray.size != (width, height):
        gray = gray.resize((width, height), resample=Image.Resampling.LANCZOS)  # A1111's resize_image, mode 0
    small = gray.convert("RGB").resize((latent_width, latent_height), resample=Image.Resampling.BICUBIC)
    values = np.asarray(small, dtype=np.float32)[..., 0] / np.float32(MAX_8BIT)
    return np.around(values)[np.newaxis, np.newaxis].astype(np.float32)


def k_image_start(
    resolved: ResolvedRequest,
    sampler: KDiffusionSampler | A1111TimestepSampler,
    generator,
    shape: tuple[int, ...],
    encode: ImageEncoder,
    *,
    inpainting_unet: bool,
    noise,
) -> DenoiseStart:
    """The start of a k-diffusion run from an image (with a mask: inpainting); `noise` draws
    the initial noise of `shape` (the seeds' first draw)."""
    assert resolved.strength is not None  # resolve() sets it for every request from an image or latents
    try:
        sampler.start_at_strength(resolved.strength, bool(resolved.request.img2img_fix_steps))
    except ConfigError as error:  # a schedule without usable levels for these steps
        raise GenerationError(f"strength {resolved.strength}: {error}", "strength") from None
    initial = noise(generator, shape)
    batch = shape[0]
    mean = PosteriorMean()
    if resolved.init_latents is not None:
        image_latents = resolved.init_latents
    else:
        assert resolved.image is not None  # image-to-image without latents is from an image
        pixels = to_model_input(resolved.image, resolved.height, resolved.width)
        image_latents = encode(pixels, mean)  # type: ignore[arg-type]
    if image_latents.shape[0] != batch:
        image_latents = np.concatenate([image_latents] * batch)
    latents = sampler.noised_image(image_latents, initial)
    if resolved.mask is None:
        return DenoiseStart(latents.astype(np.float32), 0)
    repaint = latent_mask(resolved.mask, resolved.height, resolved.width, shape[2], shape[3])
    sampler.keep = (image_latents, np.concatenate([np.float32(1) - repaint] * batch))
    if not inpainting_unet:
        return DenoiseStart(latents.astype(np.float32), 0)
    # An inpainting UNet also takes the mask and the masked image's latents (not checked against A1111).
    assert resolved.image is not None
    pixels = to_model_input(resolved.image, resolved.height, resolved.width)
    mask_pixels = to_mask_input(resolved.mask, resolved.image, resolved.height, resolved.width)
    masked = np.concatenate([encode(pixels * (mask_pixels < MASK_THRESHOLD), mean)] * batch)  # type: ignore[arg-type]
    channel_mask = np.concatenate([downsample_nearest(mask_pixels, shape[2], shape[3])] * batch)
    return DenoiseStart(latents.astype(np.float32), 0, channels=np.concatenate([channel_mask, masked], axis=1))
