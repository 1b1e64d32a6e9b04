"""Euler and Euler ancestral, as `diffusers.EulerDiscreteScheduler` and
`EulerAncestralDiscreteScheduler`."""

from __future__ import annotations

import numpy as np

from sdrt.runtime.rng import TorchGenerator
from sdrt.runtime.schedulers.config import BETA_DEFAULTS
from sdrt.runtime.schedulers.sigma import SIGMA_DEFAULTS, SigmaScheduler


class EulerDiscreteScheduler(SigmaScheduler):
    """Euler's method on the probability-flow ODE (Karras et al. Algorithm 2 without churn),
    with diffusers' default step arguments."""

    reference_name = "EulerDiscreteScheduler"
    config_defaults = {
        **SIGMA_DEFAULTS,
        "rescale_betas_zero_snr": False,
        "final_sigmas_type": "zero",
        "interpolation_type": "linear",
        "sigma_min": None,
        "sigma_max": None,
    }
    refused_keys = ("use_beta_sigmas", "timestep_type")

    def step(
        self, model_output: np.ndarray, step_index: int, sample: np.ndarray, generator: TorchGenerator | None = None
    ) -> np.ndarray:
        derivative = self.derivative(model_output, step_index, sample)
        return sample + derivative * (self.sigmas[step_index + 1] - self.sigmas[step_index])


class EulerAncestralDiscreteScheduler(SigmaScheduler):
    """Euler ancestral: an Euler step down to sigma_down, then fresh noise up to the next
    level (noise from the pipeline's generator)."""

    reference_name = "EulerAncestralDiscreteScheduler"
    stochastic = True
    supports_sigma_schedules = False
    config_defaults = {**BETA_DEFAULTS, "timestep_spacing": "linspace", "rescale_betas_zero_snr": False}

    def _plan(self, num_inference_steps: int) -> None:
        self._compute_sigmas(num_inference_steps)
        sigma_from, sigma_to = self.sigmas[:-1], self.sigmas[1:]
        self.sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** np.float32(0.5)
        self.sigma_down = (sigma_to**2 - self.sigma_up**2) ** np.float32(0.5)

    def step(
        self, model_output: np.ndarray, step_index: int, sample: np.ndarray, generator: TorchGenerator | None = None
    ) -> np.ndarray:
        generator = self.need_generator(generator, "euler_a")
        derivative = self.derivative(model_output, step_index, sample)
        prev_sample = sample + derivative * (self.sigma_down[step_index] - self.sigmas[step_index])
        return prev_sample + generator.randn(model_output.shape) * self.sigma_up[step_index]
