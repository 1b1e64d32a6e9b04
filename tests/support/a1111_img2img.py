"""A1111's image-to-image and inpainting with a k-diffusion sampler, written from A1111's
modules/sd_samplers_common.py (setup_img2img_steps), sd_samplers_kdiffusion.py (sample_img2img,
create_noise_sampler), sd_samplers_cfg_denoiser.py (the mask blend of each denoised prediction)
and processing.py (the latent mask; the blend of the sampled latents), independently of sdrt:
k_diffusion.sampling drives a diffusers UNet on the tail of the schedule, from the image's
latents (the VAE posterior's mean: A1111 samples it with torch's unseeded global generator)
plus each seed's first CPU noise times the tail's first level."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from support.kdiffusion_reference import denoiser, k_sampling, lcm_denoiser, sample_lcm


class A1111CpuNoise:
    """A1111's CPU randn_like (TorchHijack -> ImageRNG.next): each image's next draw from its own generator."""

    def __init__(self, generators, shape):
        self.generators, self.shape = generators, shape

    def __getattr__(self, item):
        if item == "randn_like":
            return lambda x: torch.stack([torch.randn(self.shape, generator=g) for g in self.generators])
        return getattr(torch, item)


def a1111_steps(steps: int, strength: float, fix_steps: bool) -> tuple[int, int]:
    """setup_img2img_steps: (the schedule's steps, t_enc)."""
    if fix_steps:
        return int(steps / min(strength, 0.999)), steps - 1
    return steps, int(min(strength, 0.999) * steps)


def a1111_latent_mask(mask: Image.Image, latent_size: tuple[int, int]) -> torch.Tensor:
    """processing.py: latmask = the mask as RGB resized to the latents' (width, height) with
    Pillow's default filter, channel 0 / 255, rounded (mask_round), one row per latent channel."""
    small = mask.convert("RGB").resize(latent_size)
    latmask = np.around(np.moveaxis(np.array(small, dtype=np.float32), 2, 0) / 255)[0]
    return torch.asarray(np.tile(latmask[None], (4, 1, 1)))


def inpainting_conditioning(pipe, pixels, mask: Image.Image, latent_size) -> torch.Tensor:
    """processing.py inpainting_image_conditioning: the mask rounded, the image times (1 - mask)
    (inpainting_mask_weight 1) encoded (its posterior's mean here), the mask resized to the
    latents' size (interpolate's nearest); [mask, masked image latents]."""
    conditioning_mask = torch.round(torch.asarray(np.array(mask.convert("L"), np.float32) / 255)[None, None])
    masked = pixels * (1.0 - conditioning_mask)
    masked_latents = pipe.vae.encode(masked).latent_dist.mean * pipe.vae.config.scaling_factor
    small_mask = torch.nn.functional.interpolate(conditioning_mask, size=tuple(latent_size))
    return torch.cat([small_mask, masked_latents], dim=1)


@torch.no_grad()
def a1111_img2img(
    pipe, image, function, sigmas_for, *, prompts, negatives, seeds, guidance, steps, strength,
    fix_steps=False, mask=None, brownian=False, extra=None, discard=False,
):  # fmt: skip
    """The images (float [batch, h, w, 3] in [0, 1]); `sigmas_for(n, inner)`: the schedule of n steps."""
    ks = k_sampling()
    cond, uncond = pipe.encode_prompt(prompts, "cpu", 1, True, negatives)
    pixels = torch.asarray(np.array(image, np.float32) / 255).permute(2, 0, 1)[None] * 2 - 1
    scaling = pipe.vae.config.scaling_factor
    init_latent = pipe.vae.encode(pixels).latent_dist.mean * scaling
    init_latent = init_latent.repeat(len(seeds), 1, 1, 1)
    extra_channels = None
    if pipe.unet.config.in_channels > init_latent.shape[1]:  # an inpainting UNet: A1111's image conditioning
        extra_channels = inpainting_conditioning(pipe, pixels, mask, init_latent.shape[-2:]).repeat(len(seeds), 1, 1, 1)

    def unet(x, t, context):
        if extra_channels is not None:  # the conditioning is concatenated to the scaled input, not scaled
            x = torch.cat([x, extra_channels.repeat(x.shape[0] // extra_channels.shape[0], 1, 1, 1)], dim=1)
        return pipe.unet(x, t, encoder_hidden_states=context).sample

    inner = (lcm_denoiser if function == "sample_lcm" else denoiser)(unet, pipe.scheduler.config)  # A1111's LCM's own
    keep = nmask = None
    if mask is not None:
        nmask = a1111_latent_mask(mask, (init_latent.shape[3], init_latent.shape[2]))
        keep = 1 - nmask

    def cfg(x, sigma):
        c, u = inner(torch.cat([x, x]), torch.cat([sigma, sigma]), context=torch.cat([cond, uncond])).chunk(2)
        denoised = u + (c - u) * guidance
        return denoised if keep is None else init_latent * keep + nmask * denoised

    total, t_enc = a1111_steps(steps, strength, fix_steps)
    sigmas = sigmas_for(total + (1 if discard else 0), inner)
    if discard:  # discard_next_to_last_sigma
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    sigma_sched = sigmas[total - t_enc - 1 :]
    shape = init_latent.shape[1:]
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    noise = torch.stack([torch.randn(shape, generator=g) for g in generators])
    xi = init_latent + noise * sigma_sched[0]
    kwargs = dict(extra or {})
    if brownian:  # create_noise_sampler: the whole schedule's range, the image seeds
        kwargs["noise_sampler"] = ks.BrownianTreeNoiseSampler(
            init_latent, sigmas[sigmas > 0].min(), sigmas.max(), seed=list(seeds)
        )
    ks.torch = A1111CpuNoise(generators, shape)
    try:
        if function == "sample_dpm_fast":  # sample_img2img: the tail's range and length
            latents = ks.sample_dpm_fast(
                cfg, xi, sigma_sched[-2], sigma_sched[0], len(sigma_sched) - 1, disable=True, **kwargs
            )
        elif function == "sample_dpm_adaptive":  # sample_img2img: the tail's range
            latents = ks.sample_dpm_adaptive(cfg, xi, sigma_sched[-2], sigma_sched[0], disable=True, **kwargs)
        elif function == "sample_lcm":  # A1111's own (modules/sd_samplers_lcm.py)
            latents = sample_lcm(cfg, xi, sigma_sched, disable=True, **kwargs)
        else:
            latents = getattr(ks, function)(cfg, xi, sigma_sched, disable=True, **kwargs)
    finally:
        ks.torch = torch
    if keep is not None:
        latents = latents * nmask + init_latent * keep
    decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return (decoded / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
