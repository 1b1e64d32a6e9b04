"""Heun's method on the flow ODE, as `diffusers.FlowMatchHeunDiscreteScheduler` without churn
(its default s_churn 0): the sigmas of flow_euler with a fixed `shift` (the class has no
dynamic shifting and no custom sigmas), each step but the last an Euler predictor and a
trapezoidal corrector, so n steps make 2n - 1 transformer calls."""

from __future__ import annotations

import numpy as np

from sdrt.errors import ConfigError
from sdrt.runtime.rng import TorchGenerator
from sdrt.runtime.schedulers.base import Scheduler, predict_x0
from sdrt.runtime.schedulers.config import SchedulerConfig
from sdrt.runtime.schedulers.flow import shift_sigmas
from sdrt.runtime.schedulers.spaces import FLOW, FLOW_PREDICTION

#: The two keys diffusers' class reads (and prediction_type, so a diffusion file is refused).
FLOW_HEUN_DEFAULTS = {"num_train_timesteps": 1000, "shift": 1.0, "prediction_type": FLOW_PREDICTION}


class FlowMatchHeunDiscreteScheduler(Scheduler):
    """Predictor: x + (sigma_next - sigma) * v; corrector: the step again from x with the mean
    of the predictor's slope and the slope at the predicted point."""

    reference_name = "FlowMatchHeunDiscreteScheduler"
    space = FLOW
    calls_per_step = 2
    config_defaults = FLOW_HEUN_DEFAULTS

    def __init__(self, config: SchedulerConfig):
        super().__init__(config)
        n_train = config.num_train_timesteps
        train_timesteps = np.linspace(1, n_train, n_train, dtype=np.float32)[::-1]
        train_sigmas = shift_sigmas(train_timesteps / np.float32(n_train), float(config.shift))
        self.sigma_max, self.sigma_min = float(train_sigmas[0]), float(train_sigmas[-1])
        self._first: tuple[np.ndarray, np.float32, np.ndarray] | None = None

    def set_timesteps(self, num_inference_steps: int, mu: float | None = None, sigmas=None) -> None:
        """The flow samplers' signature; this one takes neither a mu nor custom sigmas (its
        diffusers class has neither)."""
        if mu is not None or sigmas is not None:
            raise ConfigError("flow_heun has a fixed shift: it takes neither mu nor custom sigmas")
        super().set_timesteps(num_inference_steps)

    def _plan(self, num_inference_steps: int) -> None:
        n_train = self.config.num_train_timesteps
        # float64, as diffusers' NumPy stage (the shift applies a second time, as there); then float32.
        spaced = np.linspace(self.sigma_max * n_train, self.sigma_min * n_train, num_inference_steps) / n_train
        sigmas = shift_sigmas(spaced, float(self.config.shift)).astype(np.float32)
        timesteps = sigmas * np.float32(n_train)
        self.timesteps = np.concatenate([timesteps[:1], np.repeat(timesteps[1:], 2)])
        sigmas = np.append(sigmas, np.float32(0.0))
        self.sigmas = np.concatenate([sigmas[:1], np.repeat(sigmas[1:-1], 2), sigmas[-1:]])
        self._first = None

    @property
    def init_noise_sigma(self) -> float:
        return 1.0

    def scale_model_input(self, sample: np.ndarray, step_index: int) -> np.ndarray:
        return sample

    def step(
        self, model_output: np.ndarray, step_index: int, sample: np.ndarray, generator: TorchGenerator | None = None
    ) -> np.ndarray:
        if self._first is None:  # predictor, from sigmas[i] to sigmas[i + 1]
            sigma, sigma_next = self.sigmas[step_index], self.sigmas[step_index + 1]
            derivative = (sample - predict_x0(FLOW_PREDICTION, model_output, sample, sigma)) / sigma
            dt = sigma_next - sigma
            self._first = (derivative, dt, sample)
            return sample + derivative * dt
        sigma_next = self.sigmas[step_index]
        previous_derivative, dt, sample_before = self._first
        derivative = (sample - predict_x0(FLOW_PREDICTION, model_output, sample, sigma_next)) / sigma_next
        self._first = None
        return sample_before + (np.float32(0.5) * (previous_derivative + derivative)) * dt

    def add_noise(self, original: np.ndarray, noise: np.ndarray, step_index: int) -> np.ndarray:
        """diffusers' scale_noise at this call's sigma: sigma * noise + (1 - sigma) * original."""
        sigma = self.sigmas[step_index].astype(original.dtype)
        return sigma * noise + (1 - sigma) * original
