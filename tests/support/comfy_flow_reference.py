"""ComfyUI's KSampler on flow models as a reference, written here from ComfyUI's sources
independently of sdrt: comfy/model_sampling.py (ModelSamplingDiscreteFlow with time_snr_shift,
ModelSamplingFlux with flux_time_shift, their float32 tables, timestep(); CONST: calculate_input
is the sample, x0 = x - sigma * v, noise_scaling sigma * noise + (1 - sigma) * latent,
inverse_noise_scaling latent / (1 - sigma)), comfy/supported_models.py (FLUX dev shift 1.15,
schnell 1.0, SD3 3.0), comfy_extras/nodes_model_advanced.py / nodes_flux.py (ModelSamplingSD3,
ModelSamplingFlux's shift line), comfy/sample.py's prepare_noise and comfy/samplers.py's
schedulers (tests/support/comfy_reference.py), driving the `k-diffusion` package's samplers
over diffusers' FLUX and SD3 transformers."""

from __future__ import annotations

import math

import torch

from support.comfy_reference import FUNCTIONS, ksampler_sigmas
from support.kdiffusion_reference import k_sampling


class DiscreteFlow:
    """ModelSamplingDiscreteFlow + CONST."""

    def __init__(self, shift: float, multiplier: float = 1000.0, timesteps: int = 1000):
        self.shift, self.multiplier = shift, multiplier
        self.sigmas = self.sigma((torch.arange(1, timesteps + 1, 1) / timesteps) * multiplier)

    def timestep(self, sigma):
        return sigma * self.multiplier

    def sigma(self, timestep):
        t = timestep / self.multiplier
        return t if self.shift == 1.0 else self.shift * t / (1 + (self.shift - 1) * t)

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]


class FluxSampling(DiscreteFlow):
    """ModelSamplingFlux + CONST."""

    def __init__(self, shift: float, timesteps: int = 10000):
        self.shift = shift
        self.sigmas = self.sigma(torch.arange(1, timesteps + 1, 1) / timesteps)

    def timestep(self, sigma):
        return sigma

    def sigma(self, timestep):
        return math.exp(self.shift) / (math.exp(self.shift) + (1 / timestep - 1) ** 1.0)


def flux_node_shift(max_shift: float, base_shift: float, width: int, height: int) -> float:
    """ModelSamplingFlux.patch's shift."""
    mm = (max_shift - base_shift) / (4096 - 256)
    b = base_shift - mm * 256
    return (width * height / (8 * 8 * 2 * 2)) * mm + b


@torch.no_grad()
def comfy_flow_ksampler(velocity, s, sampler, scheduler, steps, cfg, seed, latent_image, **cut):
    """common_ksampler on a CONST model: `velocity(x, sigma, negative)` is the model's output
    for the positive (negative False) or negative conditioning; `latent_image` is ComfyUI's
    after process_latent_in. `cut`: denoise, start_step, last_step, force_full, add_noise."""
    ks = k_sampling()
    add_noise = cut.pop("add_noise", True)
    noise_mask = cut.pop("noise_mask", None)  # [batch or 1, h, w], 1 repaints: KSamplerX0Inpaint
    sigmas = ksampler_sigmas(s, sampler, scheduler, steps, **cut)
    if add_noise:
        noise = torch.randn(latent_image.size(), generator=torch.manual_seed(seed), device="cpu")
    else:
        noise = torch.zeros_like(latent_image)
    x = sigmas[0] * noise + (1.0 - sigmas[0]) * latent_image

    def model(x, sigma, **kwargs):
        sigma = sigma.view(-1, 1, 1, 1)
        cond = x - velocity(x, sigma.flatten(), False) * sigma
        if math.isclose(cfg, 1.0):  # ComfyUI's cfg 1 optimization: no negative call
            return cond
        uncond = x - velocity(x, sigma.flatten(), True) * sigma
        return uncond + (cond - uncond) * cfg

    if noise_mask is not None:  # comfy.sampler_helpers.prepare_mask: bilinear, repeated to the batch
        mask = torch.nn.functional.interpolate(
            noise_mask.reshape(-1, 1, *noise_mask.shape[-2:]), size=latent_image.shape[-2:], mode="bilinear"
        )
        mask = mask.repeat(-(-latent_image.shape[0] // mask.shape[0]), latent_image.shape[1], 1, 1)
        mask = mask[: latent_image.shape[0]]
        unmasked = model

        def model(x, sigma, **kwargs):
            s_ = sigma.view(-1, 1, 1, 1)
            kept = s_ * noise + (1.0 - s_) * latent_image
            return unmasked(x * mask + kept * (1 - mask), sigma) * mask + latent_image * (1 - mask)

    samples = getattr(ks, FUNCTIONS[sampler])(model, x, sigmas, disable=True)
    return samples / (1.0 - sigmas[-1])


def flux_velocity(pipe, embeds, pooled, text_ids, guidance: float, height: int, width: int):
    """diffusers' FLUX transformer as ComfyUI's Flux model: timestep sigma, the guidance value."""
    b = embeds.shape[0]
    channels = pipe.transformer.config.in_channels // 4
    latent_h, latent_w = 2 * (height // (pipe.vae_scale_factor * 2)), 2 * (width // (pipe.vae_scale_factor * 2))
    img_ids = pipe._prepare_latent_image_ids(b, latent_h // 2, latent_w // 2, "cpu", embeds.dtype)

    def velocity(x, sigma, negative):
        packed = pipe._pack_latents(x, b, channels, latent_h, latent_w)
        out = pipe.transformer(
            hidden_states=packed,
            timestep=sigma.expand(b),
            guidance=torch.full([b], guidance) if pipe.transformer.config.guidance_embeds else None,
            pooled_projections=pooled,
            encoder_hidden_states=embeds,
            txt_ids=text_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]
        return pipe._unpack_latents(out, height, width, pipe.vae_scale_factor)

    return velocity


def sd3_velocity(pipe, embeds, negative_embeds, pooled, negative_pooled):
    """diffusers' SD3 transformer as ComfyUI's: timestep sigma * 1000."""

    def velocity(x, sigma, negative):
        states, pool = (negative_embeds, negative_pooled) if negative else (embeds, pooled)
        t = (sigma * 1000).expand(x.shape[0])
        return pipe.transformer(
            hidden_states=x, timestep=t, encoder_hidden_states=states, pooled_projections=pool, return_dict=False
        )[0]

    return velocity


def decode(pipe, latents):
    """8-bit pixels as SaveImage writes them, from the model's latents (process_latent_out)."""
    config = pipe.vae.config
    with torch.no_grad():
        image = pipe.vae.decode(latents / config.scaling_factor + config.shift_factor).sample
    pixels = (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    return (pixels * 255).round().astype("uint8")
