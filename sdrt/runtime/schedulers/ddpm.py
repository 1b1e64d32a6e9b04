"""Denoising diffusion probabilistic models (ancestral sampling with the posterior's variance),
as `diffusers.DDPMScheduler`; the noise comes from the pipeline's generator."""

from __future__ import annotations

import numpy as np

from sdrt.runtime.rng import TorchGenerator
from sdrt.runtime.schedulers.alpha import AlphaTableScheduler
from sdrt.runtime.schedulers.base import HALF
from sdrt.runtime.schedulers.config import BETA_DEFAULTS
from sdrt.runtime.schedulers.tables import spaced_timesteps

# DDPM's variance floor (diffusers clamps it before the square root or log).
DDPM_MIN_VARIANCE = 1e-20


class DDPMScheduler(AlphaTableScheduler):
    """DDPM: the posterior mean from x0 and the sample, plus noise of the configured variance."""

    reference_name = "DDPMScheduler"
    stochastic = True
    config_defaults = {
        **BETA_DEFAULTS,
        "timestep_spacing": "leading",
        "clip_sample": True,
        "clip_sample_range": 1.0,
        "variance_type": "fixed_small",
        "rescale_betas_zero_snr": False,
    }
    refused_keys = ("thresholding",)

    def _plan(self, num_inference_steps: int) -> None:
        timesteps = spaced_timesteps(self.config, num_inference_steps)
        self.timesteps = timesteps.astype(np.float32)
        previous = np.append(timesteps[1:], -1)
        one = np.float32(1.0)
        alpha = self.alphas_cumprod[timesteps]
        alpha_prev = np.where(previous >= 0, self.alphas_cumprod[np.maximum(previous, 0)], one).astype(np.float32)
        beta, beta_prev = one - alpha, one - alpha_prev
        current_alpha = alpha / alpha_prev
        current_beta = one - current_alpha
        self.alpha_prod, self.beta_prod = alpha, beta
        self.set_levels(alpha, alpha_prev[-1])
        self.original_coefficient = (alpha_prev**HALF * current_beta) / beta
        self.sample_coefficient = current_alpha**HALF * beta_prev / beta
        variance = np.maximum((one - alpha_prev) / (one - alpha) * current_beta, np.float32(DDPM_MIN_VARIANCE))
        if self.config.variance_type == "fixed_small":
            self.noise_scale = variance**HALF
        elif self.config.variance_type == "fixed_small_log":
            self.noise_scale = np.exp(HALF * np.log(variance))
        else:
            self.noise_scale = current_beta**HALF

    def step(
        self, model_output: np.ndarray, step_index: int, sample: np.ndarray, generator: TorchGenerator | None = None
    ) -> np.ndarray:
        original = self.x0(model_output, sample, self.alpha_prod[step_index], self.beta_prod[step_index])
        prev_sample = self.original_coefficient[step_index] * original + self.sample_coefficient[step_index] * sample
        if self.timesteps[step_index] > 0:
            noise = self.need_generator(generator, "ddpm").randn(model_output.shape)
            prev_sample = prev_sample + self.noise_scale[step_index] * noise
        return prev_sample
