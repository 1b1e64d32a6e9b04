"""Heun's second-order method (Karras et al. Algorithm 1 without churn), as
`diffusers.HeunDiscreteScheduler`."""

from __future__ import annotations

import numpy as np

from sdrt.runtime.rng import TorchGenerator
from sdrt.runtime.schedulers.base import predict_x0
from sdrt.runtime.schedulers.config import SchedulerConfig
from sdrt.runtime.schedulers.sigma import SIGMA_DEFAULTS, SigmaScheduler


class HeunDiscreteScheduler(SigmaScheduler):
    """Every step but the last makes two UNet calls, an Euler predictor and a trapezoidal
    corrector, so n steps take 2n - 1 calls."""

    reference_name = "HeunDiscreteScheduler"
    calls_per_step = 2
    config_defaults = {
        **SIGMA_DEFAULTS,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "clip_sample": False,
        "clip_sample_range": 1.0,
    }
    refused_keys = ("use_beta_sigmas",)

    def __init__(self, config: SchedulerConfig):
        super().__init__(config)
        self._first: tuple[np.ndarray, np.float32, np.ndarray] | None = None

    def _plan(self, num_inference_steps: int) -> None:
        self._compute_sigmas(num_inference_steps)
        sigmas, timesteps = self.sigmas, self.timesteps
        self.sigmas = np.concatenate([sigmas[:1], np.repeat(sigmas[1:-1], 2), sigmas[-1:]])
        self.timesteps = np.concatenate([timesteps[:1], np.repeat(timesteps[1:], 2)])
        self._first = None

    def step(
        self, model_output: np.ndarray, step_index: int, sample: np.ndarray, generator: TorchGenerator | None = None
    ) -> np.ndarray:
        first_order = self._first is None
        if first_order:
            sigma, sigma_next = self.sigmas[step_index], self.sigmas[step_index + 1]
            sigma_input = sigma
        else:
            sigma, sigma_next = self.sigmas[step_index - 1], self.sigmas[step_index]
            sigma_input = sigma_next
        original = predict_x0(self.config.prediction_type, model_output, sample, sigma_input, clip=self.clip)
        if first_order:
            derivative = (sample - original) / sigma
            dt = sigma_next - sigma
            self._first = (derivative, dt, sample)
        else:
            # Corrector: average the predictor's slope with the slope at the predicted point,
            # and step again from the predictor's starting sample.
            previous_derivative, dt, sample_before = self._first
            derivative = (previous_derivative + (sample - original) / sigma_next) / 2
            sample = sample_before
            self._first = None
        return sample + derivative * dt
