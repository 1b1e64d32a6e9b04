"""What the multistep solvers (DPM++, UniPC) share: a schedule spanning the whole training
range, the variance-preserving tables alpha_t = 1 / sqrt(sigma^2 + 1), sigma_t = sigma * alpha_t
and lambda = log(alpha_t / sigma_t), and the data (x0) prediction their updates work on. Their
flow-matching variants (use_flow_sigmas) replace only the schedule and the two tables."""

from __future__ import annotations

from abc import abstractmethod

import numpy as np

from sdrt.runtime.schedulers.base import HALF, Scheduler, predict_x0
from sdrt.runtime.schedulers.config import BETA_DEFAULTS, SchedulerConfig
from sdrt.runtime.schedulers.tables import (
    compute_alphas_cumprod,
    converted_sigmas,
    sigma_to_timestep,
    spaced_timesteps,
    training_sigmas,
)

MULTISTEP_DEFAULTS = {
    **BETA_DEFAULTS,
    "timestep_spacing": "linspace",
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "rescale_betas_zero_snr": False,
    "final_sigmas_type": "zero",
    "solver_order": 2,
    "lower_order_final": True,
}


def multistep_schedule(
    config: SchedulerConfig, alphas_cumprod: np.ndarray, n: int, *, karras_rounds: bool, final_from_schedule: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(sigmas with the final level appended, whole-number float32 timesteps). DPM++ and UniPC differ in two
    details: whether Karras timesteps are rounded, and whether a sigma_min final level repeats
    the converted schedule's last sigma (UniPC) or is the training sigma_min (DPM++)."""
    timesteps = spaced_timesteps(config, n, span_final=True)
    train_sigmas = training_sigmas(alphas_cumprod)
    sigmas = converted_sigmas(config, float(train_sigmas[0]), float(train_sigmas[-1]), n)
    final = 0.0
    if config.final_sigmas_type == "sigma_min":
        final = float(train_sigmas[0])
    if sigmas is not None:
        timesteps = sigma_to_timestep(sigmas, np.log(train_sigmas))
        if config.use_karras_sigmas and karras_rounds:
            timesteps = timesteps.round()
        if config.final_sigmas_type == "sigma_min" and final_from_schedule:
            final = float(sigmas[-1])
    else:
        sigmas = np.interp(timesteps, np.arange(len(train_sigmas)), train_sigmas)
    return np.concatenate([sigmas, [final]]).astype(np.float32), timesteps.astype(np.int64).astype(np.float32)


class MultistepScheduler(Scheduler):
    """The shared schedule and tables; subclasses say how Karras timesteps round and where a
    sigma_min final level comes from, then plan their own coefficients (`_plan_solver`)."""

    #: Whether Karras timesteps are rounded, and whether a sigma_min final level repeats the
    #: converted schedule's last sigma (see multistep_schedule).
    karras_rounds: bool = True
    final_from_schedule: bool = False

    def __init__(self, config: SchedulerConfig):
        super().__init__(config)
        self.alphas_cumprod = compute_alphas_cumprod(config)

    @property
    def init_noise_sigma(self) -> float:
        return 1.0

    def _plan(self, num_inference_steps: int) -> None:
        self.sigmas, self.timesteps = self._schedule(num_inference_steps)
        self.num_inference_steps = len(self.timesteps)
        self.alpha_t, self.sigma_t = self._signal_and_noise(self.sigmas)
        with np.errstate(divide="ignore"):  # the final sigma 0 gives lambda = +inf
            self.lambdas = np.log(self.alpha_t) - np.log(self.sigma_t)
        self._plan_solver()

    def _schedule(self, num_inference_steps: int) -> tuple[np.ndarray, np.ndarray]:
        """(sigmas with the final level, float32 timesteps): the diffusion schedule; the flow
        variants (sdrt.runtime.schedulers.flow_multistep) give use_flow_sigmas' instead."""
        return multistep_schedule(
            self.config,
            self.alphas_cumprod,
            num_inference_steps,
            karras_rounds=self.karras_rounds,
            final_from_schedule=self.final_from_schedule,
        )

    def _signal_and_noise(self, sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(alpha_t, sigma_t) of each level: variance preserving here, 1 - sigma and sigma on
        the flow path (diffusers' _sigma_to_alpha_sigma_t)."""
        one = np.float32(1.0)
        alpha_t = one / (sigmas**2 + one) ** HALF
        return alpha_t, sigmas * alpha_t

    @abstractmethod
    def _plan_solver(self) -> None:
        """Compute the solver's coefficients from the tables and reset its history."""

    def scale_model_input(self, sample: np.ndarray, step_index: int) -> np.ndarray:
        return sample

    def data_prediction(self, model_output: np.ndarray, step_index: int, sample: np.ndarray) -> np.ndarray:
        return predict_x0(
            self.config.prediction_type, model_output, sample, self.sigma_t[step_index], self.alpha_t[step_index]
        )

    def add_noise(self, original: np.ndarray, noise: np.ndarray, step_index: int) -> np.ndarray:
        return self.alpha_t[step_index] * original + self.sigma_t[step_index] * noise
