"""A model's noise levels as k-diffusion sees them (its `DiscreteSchedule`): the sigma of each
training timestep from the model's betas, and the maps between sigma and the fractional
timestep the UNet is called with (interpolation in log-sigma, no quantization: A1111's default).

The betas and their cumulative product are computed in float64 and rounded once to float32, as
the LDM / A1111 model code and ComfyUI's model_sampling do; sigmas are then float32 arithmetic
on those, as k-diffusion's wrapper computes them.
"""

from __future__ import annotations

import numpy as np

from sdrt.runtime.schedulers.config import SchedulerConfig
from sdrt.runtime.schedulers.tables import COSINE_MAX_BETA, COSINE_OFFSET, linspace_float32, sigma_to_timestep


def model_alphas_cumprod(config: SchedulerConfig, dtype=np.float32) -> np.ndarray:
    """alpha_bar of every training timestep (float32 unless `dtype` says), from float64 betas."""
    n = config.num_train_timesteps
    if config.trained_betas is not None:
        betas = np.asarray(config.trained_betas, dtype=np.float64)
    elif config.beta_schedule == "linear":
        betas = np.linspace(config.beta_start, config.beta_end, n, dtype=np.float64)
    elif config.beta_schedule == "scaled_linear":
        betas = np.linspace(config.beta_start**0.5, config.beta_end**0.5, n, dtype=np.float64) ** 2
    else:
        steps = np.arange(n + 1, dtype=np.float64) / n
        alpha_bar = np.cos((steps + COSINE_OFFSET) / (1 + COSINE_OFFSET) * np.pi / 2) ** 2
        betas = np.minimum(1 - alpha_bar[1:] / alpha_bar[:-1], COSINE_MAX_BETA)
    return np.cumprod(1.0 - betas).astype(dtype)


class ModelSigmas:
    """The model's sigma table (ascending: timestep 0 first) and its conversions."""

    def __init__(self, config: SchedulerConfig):
        alphas_cumprod = model_alphas_cumprod(config)
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** np.float32(0.5)
        self.log_sigmas = np.log(self.sigmas)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma) -> np.ndarray:
        """Fractional timesteps of noise levels (k-diffusion's sigma_to_t, quantize off)."""
        sigma = np.asarray(sigma, dtype=np.float32)
        return sigma_to_timestep(sigma, self.log_sigmas).astype(np.float32)

    def t_to_sigma(self, t) -> np.ndarray:
        """Noise levels of fractional timesteps: log-sigma interpolated between neighbours."""
        t = np.asarray(t, dtype=np.float32)
        low, high = np.floor(t).astype(np.int64), np.ceil(t).astype(np.int64)
        weight = t - np.floor(t)
        log_sigma = (1 - weight) * self.log_sigmas[low] + weight * self.log_sigmas[high]
        return np.exp(log_sigma).astype(np.float32)

    def uniform(self, n: int) -> np.ndarray:
        """k-diffusion's get_sigmas(n): n timesteps evenly from the last to 0, then a final 0."""
        t_max = len(self.sigmas) - 1
        t = linspace_float32(t_max, 0, n)
        return np.append(self.t_to_sigma(t), np.float32(0)).astype(np.float32)
