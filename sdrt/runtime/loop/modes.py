"""The three generation modes, each as the start of a denoising run: initial latents, the first
step, the denoiser's extra input channels and a per-step blend (a step hook). The pipeline
picks one by the request's inputs and runs the same loop for all of them.

- text-to-image: seeded noise (or given latents) at the first step's noise level;
- image-to-image (StableDiffusionImg2ImgPipeline): the image's latents noised to the level of
  step n - int(n * strength);
- inpainting (StableDiffusionInpaintPipeline): an inpainting UNet (more input channels) gets
  the mask and the masked image's latents with every call; an ordinary UNet denoises
  everything and, after each step, the kept region is replaced by the original latents noised
  to the next step's level.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from sdrt.runtime.families import Family, LatentFormat
from sdrt.runtime.imaging.inputs import MASK_THRESHOLD, downsample_nearest, to_mask_input, to_model_input
from sdrt.runtime.loop.context import StepContext
from sdrt.runtime.loop.hooks import StepHook
from sdrt.runtime.loop.timings import VAE_ENCODER, Timings
from sdrt.runtime.manifest import Manifest
from sdrt.runtime.request import GenerationError
from sdrt.runtime.request_resolve import ResolvedRequest
from sdrt.runtime.rng import TorchGenerator
from sdrt.runtime.schedulers import Scheduler


class ImageEncoder(Protocol):
    def __call__(self, image: np.ndarray, generator: TorchGenerator) -> np.ndarray: ...


class Mode(Protocol):
    """A family's own mode (Family.own_mode): the run's start from the request."""

    def __call__(
        self, resolved: ResolvedRequest, sampler: Scheduler, generator, shape: tuple[int, ...], encode: ImageEncoder
    ) -> DenoiseStart: ...


@dataclass
class DenoiseStart:
    """Where a denoising run begins and what each step adds."""

    latents: np.ndarray | None  # None until a previous run (the SDXL base, for its refiner) gives them
    first: int = 0  # the first denoiser call
    channels: np.ndarray | None = None  # per image, appended to the denoiser input's channels every call
    hooks: list[StepHook] = field(default_factory=list)  # the mode's step hooks (the inpainting blend)
    end: int | None = None  # the denoiser call to stop before (None: the sampler's last)
    counted_from: int | None = None  # the call prompt schedules count steps from (None: `first`)


def initial_noise(resolved: ResolvedRequest, sampler: Scheduler, generator, shape: tuple[int, ...]) -> np.ndarray:
    """The seeded initial noise of `shape` (before any scaling), with A1111's noise settings
    (sdrt.runtime.a1111_noise) where the request has them."""
    settings = resolved.request.a1111_noise
    if settings is None:
        return generator.randn(shape)
    from sdrt.runtime.a1111_noise import a1111_initial_noise, ensd_generator

    if settings.changes_noise:
        noise = a1111_initial_noise(settings, generator, shape, resolved.height)
    else:
        noise = generator.randn(shape)
    step_generator = ensd_generator(settings, generator)
    if step_generator is not None:
        if not hasattr(sampler, "step_generator"):
            if sampler.stochastic:
                raise GenerationError("eta_noise_seed_delta is for the k-diffusion samplers", "eta_noise_seed_delta")
        else:
            sampler.step_generator = step_generator
    return noise


def text_to_image(resolved: ResolvedRequest, sampler: Scheduler, generator, shape: tuple[int, ...]) -> DenoiseStart:
    given = resolved.request.latents
    if given is None:
        return DenoiseStart(initial_noise(resolved, sampler, generator, shape) * np.float32(sampler.text_noise_scale))
    latents = np.asarray(given, dtype=np.float32)
    if latents.shape != shape:
        raise GenerationError(f"latents must have shape {list(shape)}, got {list(latents.shape)}", "latents")
    return DenoiseStart(latents * np.float32(sampler.text_noise_scale))


def first_step(resolved: ResolvedRequest, sampler: Scheduler, family: Family) -> int:
    """The UNet call image-to-image and inpainting start from, for their strength (the
    family's rounding: Family.skipped_steps)."""
    steps = resolved.request.steps
    assert resolved.strength is not None  # resolve() sets it for every request from an image or latents
    start = family.skipped_steps(steps, resolved.strength) * sampler.calls_per_step
    if start >= len(sampler.timesteps):
        raise GenerationError(
            f"strength {resolved.strength} with {steps} steps leaves no denoising step; raise either", "strength"
        )
    return start


def image_to_image(
    resolved: ResolvedRequest,
    sampler: Scheduler,
    generator,
    shape: tuple[int, ...],
    encode: ImageEncoder,
    family: Family,
) -> DenoiseStart:
    start = first_step(resolved, sampler, family)
    if resolved.init_latents is not None:  # diffusers' img2img given latents: used as they are
        encoded = resolved.init_latents
    else:
        assert resolved.image is not None  # image-to-image without latents is from an image
        encoded = encode(to_model_input(resolved.image, resolved.height, resolved.width), generator)
    encoded = np.concatenate([encoded] * shape[0]) if encoded.shape[0] != shape[0] else encoded
    return DenoiseStart(sampler.add_noise(encoded, generator.randn(shape), start), start)


class InpaintBlend(StepHook):
    """An ordinary UNet's inpainting: after each step the kept region is the original latents
    noised to the next step's level (the last step: the original itself)."""

    def __init__(self, sampler: Scheduler, image_latents: np.ndarray, noise: np.ndarray, latent_mask: np.ndarray):
        self.sampler, self.image_latents, self.noise, self.latent_mask = sampler, image_latents, noise, latent_mask
        self.last = len(sampler.timesteps) - 1

    def after_step(self, ctx: StepContext, latents: np.ndarray) -> np.ndarray:
        index = ctx.index
        known = (
            self.image_latents
            if index == self.last
            else self.sampler.add_noise(self.image_latents, self.noise, index + 1)
        )
        return (1 - self.latent_mask) * known + self.latent_mask * latents


def inpainting(
    resolved: ResolvedRequest,
    sampler: Scheduler,
    generator,
    shape: tuple[int, ...],
    encode: ImageEncoder,
    *,
    inpainting_unet: bool,
    family: Family,
) -> DenoiseStart:
    """Draws from `generator` in diffusers' order: image latents (when needed), noise, then the
    masked image's latents."""
    batch = shape[0]
    start = first_step(resolved, sampler, family)
    assert resolved.image is not None and resolved.mask is not None  # resolve(): a mask needs an image
    pixels = to_model_input(resolved.image, resolved.height, resolved.width)
    mask_pixels = to_mask_input(resolved.mask, resolved.image, resolved.height, resolved.width)
    full_strength = resolved.strength == 1.0
    image_latents = None
    if not inpainting_unet or not full_strength:
        image_latents = np.concatenate([encode(pixels, generator)] * batch)
    noise = generator.randn(shape)
    if full_strength:
        latents = noise * np.float32(sampler.init_noise_sigma)
    else:
        assert image_latents is not None  # encoded above when not at full strength
        latents = sampler.add_noise(image_latents, noise, start)
    masked_latents = encode(pixels * (mask_pixels < MASK_THRESHOLD), generator)
    latent_mask = np.concatenate([downsample_nearest(mask_pixels, shape[2], shape[3])] * batch)
    masked_latents = np.concatenate([masked_latents] * batch)
    if inpainting_unet:
        # One row per image: the loop stacks them as the guider stacks the latents.
        return DenoiseStart(latents, start, channels=np.concatenate([latent_mask, masked_latents], axis=1))
    assert image_latents is not None  # encoded above for an ordinary UNet
    return DenoiseStart(latents, start, hooks=[InpaintBlend(sampler, image_latents, noise, latent_mask)])


def prepare(
    manifest: Manifest, resolved: ResolvedRequest, sampler: Scheduler, generator, timings: Timings, encode: ImageEncoder
) -> DenoiseStart:
    """The request's mode's start (the VAE encoder's time in VAE_ENCODER)."""
    shape = LatentFormat.of(manifest).shape(resolved.batch, resolved.height, resolved.width)
    own = manifest.model_family.own_mode(manifest, resolved)
    if own is not None:
        with timings.stage(VAE_ENCODER):
            return own(resolved, sampler, generator, shape, encode)
    if not resolved.from_image:
        return text_to_image(resolved, sampler, generator, shape)
    with timings.stage(VAE_ENCODER):
        if getattr(sampler, "starts_images_as_a1111", False):  # the k-diffusion samplers: A1111's rules
            from sdrt.runtime.loop.a1111_img2img import k_image_start

            inpainting_unet = resolved.mask is not None and manifest.model_family.inpainting_denoiser(manifest)
            noise = functools.partial(initial_noise, resolved, sampler)
            return k_image_start(
                resolved,
                sampler,  # type: ignore[arg-type]
                generator,
                shape,
                encode,
                inpainting_unet=inpainting_unet,
                noise=noise,
            )
        settings = resolved.request.a1111_noise
        if settings is not None and (settings.changes_noise or settings.eta_noise_seed_delta):
            raise GenerationError(
                "variation seeds, seed resizing and ENSD from an image are for the k-diffusion samplers", "subseed"
            )
        if resolved.mask is not None:
            return inpainting(
                resolved,
                sampler,
                generator,
                shape,
                encode,
                inpainting_unet=manifest.model_family.inpainting_denoiser(manifest),
                family=manifest.model_family,
            )
        return image_to_image(resolved, sampler, generator, shape, encode, manifest.model_family)
