"""The k-diffusion family's base: samplers that work on sigma = sqrt((1 - alpha_bar) / alpha_bar).
The model input is scaled by 1 / sqrt(sigma^2 + 1) and noise is added as x + sigma * n."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from sdrt.runtime.schedulers.base import HALF, Scheduler, predict_x0
from sdrt.runtime.schedulers.config import BETA_DEFAULTS, SchedulerConfig
from sdrt.runtime.schedulers.tables import (
    compute_alphas_cumprod,
    converted_sigmas,
    linspace_float32,
    sigma_to_timestep,
    spaced_timesteps,
    training_sigmas,
)

#: The config keys of diffusers' Euler, LMS and Heun classes beyond the beta schedule.
SIGMA_DEFAULTS = {
    **BETA_DEFAULTS,
    "timestep_spacing": "linspace",
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
}


class SigmaScheduler(Scheduler):
    """Samplers stepping on sigma; `sigmas` holds one level per UNet call and a final one."""

    #: Whether the diffusers class honours use_karras_sigmas / use_exponential_sigmas.
    supports_sigma_schedules: ClassVar[bool] = True

    def __init__(self, config: SchedulerConfig):
        super().__init__(config)
        self.alphas_cumprod = compute_alphas_cumprod(config)
        # sigma of each training timestep, float32 like the reference's torch arithmetic.
        self.train_sigmas = training_sigmas(self.alphas_cumprod)
        self.sigmas = np.zeros(1, dtype=np.float32)

    def _compute_sigmas(self, num_inference_steps: int) -> None:
        """`timesteps` (float32) and `sigmas` (float32, one more: the final level)."""
        config = self.config
        timesteps = spaced_timesteps(config, num_inference_steps, integer=False)
        train_sigmas = self.train_sigmas
        log_sigmas = np.log(train_sigmas)
        if config.interpolation_type == "log_linear":
            sigmas = np.exp(
                linspace_float32(
                    float(np.log(train_sigmas[-1])), float(np.log(train_sigmas[0])), num_inference_steps + 1
                )
            ).astype(np.float32)
        else:
            sigmas = np.interp(timesteps, np.arange(len(train_sigmas)), train_sigmas)
        if self.supports_sigma_schedules:
            sigma_min = config.sigma_min if config.sigma_min is not None else float(sigmas[-1])
            sigma_max = config.sigma_max if config.sigma_max is not None else float(sigmas[0])
            converted = converted_sigmas(config, sigma_min, sigma_max, num_inference_steps)
            if converted is not None:
                sigmas, timesteps = converted, sigma_to_timestep(converted, log_sigmas)
        final = 0.0
        if config.final_sigmas_type == "sigma_min":
            final = float(train_sigmas[0])
        self.sigmas = np.concatenate([sigmas, [final]]).astype(np.float32)
        self.timesteps = np.asarray(timesteps, dtype=np.float32)

    def _plan(self, num_inference_steps: int) -> None:
        self._compute_sigmas(num_inference_steps)

    @property
    def init_noise_sigma(self) -> float:
        sigma_max = self.sigmas.max()
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return float(sigma_max)
        return float(np.sqrt(sigma_max**2 + np.float32(1)))

    def scale_model_input(self, sample: np.ndarray, step_index: int) -> np.ndarray:
        sigma = self.sigmas[step_index]
        return sample / ((sigma**2 + 1) ** HALF)

    def derivative(self, model_output: np.ndarray, step_index: int, sample: np.ndarray) -> np.ndarray:
        """d(sample)/d(sigma) at this step: (sample - x0) / sigma."""
        sigma = self.sigmas[step_index]
        return (sample - predict_x0(self.config.prediction_type, model_output, sample, sigma)) / sigma

    def add_noise(self, original: np.ndarray, noise: np.ndarray, step_index: int) -> np.ndarray:
        sigma = self.sigmas[step_index].astype(original.dtype)
        return original + noise * sigma
