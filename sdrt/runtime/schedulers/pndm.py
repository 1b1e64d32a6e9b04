"""Pseudo numerical methods in their PLMS form (linear multistep on the model output), as
`diffusers.PNDMScheduler` with skip_prk_steps. The registry sets skip_prk_steps for `pndm`, so a
model whose scheduler file lacks it (diffusers' default is the Runge-Kutta warm-up) still runs
PLMS, and the diffusers reference is built the same way."""

from __future__ import annotations

import numpy as np

from sdrt.errors import ConfigError
from sdrt.runtime.rng import TorchGenerator
from sdrt.runtime.schedulers.alpha import AlphaTableScheduler
from sdrt.runtime.schedulers.base import HALF, predict_epsilon
from sdrt.runtime.schedulers.config import BETA_DEFAULTS, SchedulerConfig
from sdrt.runtime.schedulers.tables import spaced_timesteps


class PNDMScheduler(AlphaTableScheduler):
    """PLMS: n steps make n + 1 UNet calls (the second step re-evaluates the first's target)."""

    reference_name = "PNDMScheduler"
    config_defaults = {
        **BETA_DEFAULTS,
        "timestep_spacing": "leading",
        "set_alpha_to_one": False,
        "skip_prk_steps": False,
    }

    def __init__(self, config: SchedulerConfig):
        super().__init__(config)
        if not config.skip_prk_steps:
            raise ConfigError(
                "PNDM's Runge-Kutta warm-up (skip_prk_steps false) is not supported; the `pndm` "
                "sampler runs PLMS (skip_prk_steps true)"
            )
        if config.prediction_type not in ("epsilon", "v_prediction"):
            raise ConfigError("PNDM supports the epsilon and v_prediction prediction types")
        self.final_alpha_cumprod = np.float32(1.0) if config.set_alpha_to_one else self.alphas_cumprod[0]
        self._ets: list[np.ndarray] = []
        self._counter = 0
        self._held_sample: np.ndarray | None = None

    def _plan(self, num_inference_steps: int) -> None:
        ascending = spaced_timesteps(self.config, num_inference_steps)[::-1]
        timesteps = np.concatenate([ascending[:-1], ascending[-2:-1], ascending[-1:]])[::-1]
        self.timesteps = timesteps.astype(np.float32)
        # The last call steps back by n_train // n (never the repeated second call's way).
        final = self._alpha(int(timesteps[-1]) - self.config.num_train_timesteps // num_inference_steps)
        self.set_levels(self.alphas_cumprod[timesteps], final)
        self._ets, self._counter, self._held_sample = [], 0, None

    def _alpha(self, timestep: int) -> np.float32:
        return self.alphas_cumprod[timestep] if timestep >= 0 else self.final_alpha_cumprod

    def step(
        self, model_output: np.ndarray, step_index: int, sample: np.ndarray, generator: TorchGenerator | None = None
    ) -> np.ndarray:
        ratio = self.config.num_train_timesteps // self.num_inference_steps
        timestep = int(self.timesteps[step_index])
        prev_timestep = timestep - ratio
        if self._counter != 1:
            self._ets = self._ets[-3:] + [model_output]
        else:
            prev_timestep, timestep = timestep, timestep + ratio
        ets = self._ets
        if len(ets) == 1 and self._counter == 0:
            self._held_sample = sample
        elif len(ets) == 1 and self._counter == 1:
            model_output = (model_output + ets[-1]) / 2
            sample, self._held_sample = self._held_sample, None
        elif len(ets) == 2:
            model_output = (3 * ets[-1] - ets[-2]) / 2
        elif len(ets) == 3:
            model_output = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
        else:
            model_output = (1 / 24) * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])
        self._counter += 1
        alpha_t, alpha_prev = self._alpha(timestep), self._alpha(prev_timestep)
        beta_t, beta_prev = 1 - alpha_t, 1 - alpha_prev
        epsilon = predict_epsilon(self.config.prediction_type, model_output, sample, alpha_t**HALF, beta_t**HALF)
        sample_coefficient = (alpha_prev / alpha_t) ** HALF
        denominator = alpha_t * beta_prev**HALF + (alpha_t * beta_t * alpha_prev) ** HALF
        return sample_coefficient * sample - (alpha_prev - alpha_t) * epsilon / denominator
