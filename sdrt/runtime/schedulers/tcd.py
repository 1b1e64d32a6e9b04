"""Trajectory consistency distillation's sampling, as `diffusers.TCDScheduler`: LCM's schedule
(sdrt.runtime.schedulers.lcm), and a step that maps the model's prediction to an intermediate
timestep s = floor((1 - gamma) * next timestep), then, for gamma > 0 and except on the last step,
noises it to the next timestep's level with fresh noise. gamma is the request's `eta`; without one
it is 0 (deterministic), what diffusers' pipelines pass by default (their `eta=0.0`). The TCD
authors suggest 0.3."""

from __future__ import annotations

import math

import numpy as np

from sdrt.runtime.rng import TorchGenerator
from sdrt.runtime.schedulers.base import HALF, predict_epsilon, predict_x0
from sdrt.runtime.schedulers.lcm import LCMScheduler

DEFAULT_GAMMA = 0.0  # diffusers' pipelines pass eta=0.0 to every scheduler that takes one


class TCDScheduler(LCMScheduler):
    reference_name = "TCDScheduler"
    refused_keys = ("thresholding",)
    takes_eta = True

    def __init__(self, config):
        super().__init__(config)
        self.eta = DEFAULT_GAMMA

    def final_level_alpha(self) -> np.float32:
        """TCD's last step maps x0 to timestep floor((1 - gamma) * 0) = 0, not to x0 itself."""
        return self.alphas_cumprod[0]

    def step(
        self, model_output: np.ndarray, step_index: int, sample: np.ndarray, generator: TorchGenerator | None = None
    ) -> np.ndarray:
        eta = float(self.eta)
        last = step_index == self.num_inference_steps - 1
        following = 0 if last else int(self.timesteps[step_index + 1])
        intermediate = int(math.floor((1 - eta) * following))
        alpha_t = self.alphas_cumprod[int(self.timesteps[step_index])]
        alpha_next = self.alphas_cumprod[following]
        alpha_s = self.alphas_cumprod[intermediate]
        prediction = self.config.prediction_type
        x0 = predict_x0(prediction, model_output, sample, (1 - alpha_t) ** HALF, alpha_t**HALF)
        epsilon = predict_epsilon(
            prediction, model_output if prediction != "sample" else x0, sample, alpha_t**HALF, (1 - alpha_t) ** HALF
        )
        noised = alpha_s**HALF * x0 + (1 - alpha_s) ** HALF * epsilon
        if eta <= 0 or last:
            return noised.astype(np.float32)
        noise = self.need_generator(generator, "tcd").randn(model_output.shape)
        ratio = alpha_next / alpha_s
        return (ratio**HALF * noised + (1 - ratio) ** HALF * noise).astype(np.float32)
