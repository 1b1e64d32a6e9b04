"""Latent consistency models' multistep sampling, as `diffusers.LCMScheduler`.

The schedule takes `original_inference_steps` evenly spaced training timesteps (k - 1, 2k - 1,
..., k = num_train_timesteps // original_inference_steps: the distillation schedule) and picks
the requested number of them, evenly by index, from the noisiest. Each step maps the model's
x0 through the consistency boundary condition (c_skip, c_out at the timestep scaled by
`timestep_scaling`) and, except on the last step, noises it again to the next timestep's level
with fresh noise from the generator.
"""

from __future__ import annotations

import numpy as np

from sdrt.errors import ConfigError
from sdrt.runtime.rng import TorchGenerator
from sdrt.runtime.schedulers.alpha import AlphaTableScheduler
from sdrt.runtime.schedulers.base import HALF
from sdrt.runtime.schedulers.config import BETA_DEFAULTS, SchedulerConfig

SIGMA_DATA = 0.5  # the consistency models' data standard deviation (diffusers' sigma_data)


class LCMScheduler(AlphaTableScheduler):
    reference_name = "LCMScheduler"
    config_defaults = {
        **BETA_DEFAULTS,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "original_inference_steps": 50,
        "clip_sample": False,
        "clip_sample_range": 1.0,
        "set_alpha_to_one": True,
        "timestep_scaling": 10.0,
        "rescale_betas_zero_snr": False,
    }
    refused_keys = ("thresholding",)
    stochastic = True

    def __init__(self, config: SchedulerConfig):
        super().__init__(config)
        self.final_alpha_cumprod = np.float32(1.0) if config.set_alpha_to_one else self.alphas_cumprod[0]

    def check_steps(self, num_inference_steps: int) -> None:
        super().check_steps(num_inference_steps)
        original = self.config.original_inference_steps
        if num_inference_steps > original:
            raise ConfigError(
                f"steps ({num_inference_steps}) cannot exceed this LCM schedule's "
                f"original_inference_steps ({original}), of which they are a subset"
            )

    def _plan(self, num_inference_steps: int) -> None:
        original = self.config.original_inference_steps
        k = self.config.num_train_timesteps // original
        distilled = (np.arange(1, original + 1) * k - 1)[::-1]
        picks = np.floor(np.linspace(0, len(distilled), num=num_inference_steps, endpoint=False)).astype(np.int64)
        timesteps = distilled[picks].astype(np.int64)
        self.timesteps = timesteps.astype(np.float32)
        following = np.append(timesteps[1:], timesteps[-1])  # the last step "continues" at its own timestep
        self.alpha_prod = self.alphas_cumprod[timesteps]
        self.alpha_prod_next = np.where(
            following >= 0, self.alphas_cumprod[np.maximum(following, 0)], self.final_alpha_cumprod
        ).astype(np.float32)
        scaled = timesteps.astype(np.float32) * np.float32(self.config.timestep_scaling)  # float32, as diffusers
        self.c_skip = np.float32(SIGMA_DATA**2) / (scaled**2 + np.float32(SIGMA_DATA**2))
        self.c_out = scaled / (scaled**2 + np.float32(SIGMA_DATA**2)) ** np.float32(HALF)
        self.set_levels(self.alpha_prod, self.final_level_alpha())

    def final_level_alpha(self) -> np.float32:
        """alpha_bar of what the last step returns: LCM's last step returns its x0 estimate."""
        return np.float32(1.0)

    def step(
        self, model_output: np.ndarray, step_index: int, sample: np.ndarray, generator: TorchGenerator | None = None
    ) -> np.ndarray:
        alpha_prod_t = self.alpha_prod[step_index]
        x0 = self.x0(model_output, sample, alpha_prod_t, 1 - alpha_prod_t)
        denoised = self.c_out[step_index] * x0 + self.c_skip[step_index] * sample
        if step_index == self.num_inference_steps - 1:
            return denoised.astype(np.float32)
        noise = self.need_generator(generator, "lcm").randn(model_output.shape)
        alpha_next = self.alpha_prod_next[step_index]
        return (alpha_next**HALF * denoised + (1 - alpha_next) ** HALF * noise).astype(np.float32)
