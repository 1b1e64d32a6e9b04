"""A1111's LCM sampler (modules/sd_samplers_lcm.py): k-diffusion's loop over a denoiser of its
own, LCMCompVisDenoiser, whose sigma table is the model's at the 50 timesteps a latent
consistency model was distilled on (19, 39, ..., 999) and whose prediction carries LCM's
boundary condition. Each step lands on the prediction and noises it afresh to the next level
(sample_lcm, the same loop as ComfyUI's lcm: solvers.lcm).

As A1111's denoiser computes it:
- the model is called at the nearest of those timesteps in log-sigma (index * 20 + 19), with the
  sample scaled by 1 / sqrt(sigma^2 + 1);
- its output is read as epsilon whatever the model's prediction type (LCMCompVisDenoiser is an
  epsilon denoiser), x0 = x - sigma * eps, and the prediction is c_out * x0 + c_skip * x with
  sigma_data 0.5 and the timestep scaled by 10 (x: the sample entering the call);
- "Automatic" (and "Uniform") is its get_sigmas: timesteps evenly from 999 to 19, their sigmas
  interpolated on the 50-level table; every other schedule type takes that table's range.
"""

from __future__ import annotations

import numpy as np

from sdrt.runtime.schedulers.config import SchedulerConfig
from sdrt.runtime.schedulers.kdiffusion import solvers
from sdrt.runtime.schedulers.kdiffusion.model_sigmas import ModelSigmas
from sdrt.runtime.schedulers.kdiffusion.sampler import KDiffusionSampler
from sdrt.runtime.schedulers.kdiffusion.schedules import AUTOMATIC
from sdrt.runtime.schedulers.tables import linspace_float32

#: LCMCompVisDenoiser's "LCM Original Timesteps" (50) over the model's 1000.
ORIGINAL_TIMESTEPS = 50
#: get_scaled_out's sigma_data and timestep scaling (LCM's boundary condition).
SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10.0


class LCMModelSigmas(ModelSigmas):
    """LCMCompVisDenoiser's table: the model's sigmas at every skip-th timestep from skip - 1."""

    def __init__(self, config: SchedulerConfig):
        super().__init__(config)
        self.skip = len(self.sigmas) // ORIGINAL_TIMESTEPS
        self.sigmas = self.sigmas[self.skip - 1 :: self.skip][:ORIGINAL_TIMESTEPS]
        self.log_sigmas = np.log(self.sigmas)

    def sigma_to_t(self, sigma) -> np.ndarray:
        """The model timestep of the nearest table level in log-sigma."""
        log_sigma = np.log(np.asarray(sigma, dtype=np.float32))
        nearest = np.abs(log_sigma[..., None] - self.log_sigmas).argmin(axis=-1)
        return (nearest * self.skip + (self.skip - 1)).astype(np.float32)

    def t_to_sigma(self, t) -> np.ndarray:
        index = (np.asarray(t, dtype=np.float32) - np.float32(self.skip - 1)) / np.float32(self.skip)
        return super().t_to_sigma(np.clip(index, 0, len(self.sigmas) - 1))

    def uniform(self, n: int) -> np.ndarray:
        start, end = self.sigma_to_t(self.sigma_max), self.sigma_to_t(self.sigma_min)
        levels = self.t_to_sigma(linspace_float32(float(start), float(end), n))
        return np.append(levels, np.float32(0)).astype(np.float32)


class KLCM(KDiffusionSampler):
    """A1111's "LCM" (k_lcm): sample_lcm on LCMCompVisDenoiser, its noise A1111's randn_like."""

    solver = staticmethod(solvers.lcm)
    reference_name = "modules.sd_samplers_lcm.sample_lcm (A1111)"
    stochastic = True

    def __init__(self, config: SchedulerConfig, schedule: str = AUTOMATIC, sdxl: bool = False):
        super().__init__(config, schedule, sdxl)
        self.model = LCMModelSigmas(config)

    def _denoised(self, model_output: np.ndarray, sample: np.ndarray, step_index: int) -> np.ndarray:
        sigma = self.sigmas[step_index]
        x0 = sample + model_output * -sigma
        scaled = self.timesteps[step_index] * np.float32(TIMESTEP_SCALING)
        data = np.float32(SIGMA_DATA) ** 2
        c_skip = data / (scaled**2 + data)
        c_out = scaled / (scaled**2 + data) ** np.float32(0.5)
        return (c_out * x0 + c_skip * sample).astype(np.float32)
