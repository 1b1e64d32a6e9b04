"""Denoising diffusion implicit models, as `diffusers.DDIMScheduler` called the way
StableDiffusionPipeline calls it (its `eta` through extra_step_kwargs, default 0: deterministic).

With eta > 0 each step adds eta * sigma_t of fresh noise (the DDIM paper's formula 16), drawn
like diffusers' `variance_noise`: one standard normal of the model output's shape from the
pipeline's generator, after the initial latents and one draw per step."""

from __future__ import annotations

import numpy as np

from sdrt.runtime.rng import TorchGenerator
from sdrt.runtime.schedulers.alpha import AlphaTableScheduler
from sdrt.runtime.schedulers.base import HALF, predict_epsilon
from sdrt.runtime.schedulers.config import BETA_DEFAULTS, SchedulerConfig
from sdrt.runtime.schedulers.tables import spaced_timesteps

#: diffusers' pipelines pass eta=0.0 (deterministic DDIM) unless told otherwise.
DEFAULT_ETA = 0.0


class DDIMScheduler(AlphaTableScheduler):
    """DDIM: x0 and the noise estimate from the model output, then the deterministic update."""

    reference_name = "DDIMScheduler"
    config_defaults = {
        **BETA_DEFAULTS,
        "timestep_spacing": "leading",
        "clip_sample": True,
        "clip_sample_range": 1.0,
        "set_alpha_to_one": True,
        "rescale_betas_zero_snr": False,
    }
    refused_keys = ("thresholding",)
    takes_eta = True

    def __init__(self, config: SchedulerConfig):
        super().__init__(config)
        self.eta = DEFAULT_ETA
        self.final_alpha_cumprod = np.float32(1.0) if config.set_alpha_to_one else self.alphas_cumprod[0]

    def _plan(self, num_inference_steps: int) -> None:
        timesteps = spaced_timesteps(self.config, num_inference_steps)
        self.timesteps = timesteps.astype(np.float32)
        # diffusers steps back by n_train // n whatever the spacing.
        previous = timesteps - self.config.num_train_timesteps // num_inference_steps
        self.alpha_prod = self.alphas_cumprod[timesteps]
        self.alpha_prod_prev = np.where(
            previous >= 0, self.alphas_cumprod[np.maximum(previous, 0)], self.final_alpha_cumprod
        ).astype(np.float32)
        # sigma_t^2 / eta^2 = (1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev)
        self.variance = (
            (1 - self.alpha_prod_prev) / (1 - self.alpha_prod) * (1 - self.alpha_prod / self.alpha_prod_prev)
        ).astype(np.float32)
        self.set_levels(self.alpha_prod, self.alpha_prod_prev[-1])

    def step(
        self, model_output: np.ndarray, step_index: int, sample: np.ndarray, generator: TorchGenerator | None = None
    ) -> np.ndarray:
        alpha_prod_t = self.alpha_prod[step_index]
        alpha_prod_prev = self.alpha_prod_prev[step_index]
        beta_prod_t = 1 - alpha_prod_t
        pred_original = self.x0(model_output, sample, alpha_prod_t, beta_prod_t)
        # The noise estimate comes from the unclipped prediction, as in diffusers.
        pred_epsilon = predict_epsilon(
            self.config.prediction_type, model_output, sample, alpha_prod_t**HALF, beta_prod_t**HALF
        )
        eta = float(self.eta)
        std_dev = np.float32(eta) * self.variance[step_index] ** HALF
        # Zero at a zero-SNR first step with eta 1, where float rounding can make it negative
        # (diffusers then takes the root of a negative number and gives NaN).
        direction = max(1 - alpha_prod_prev - std_dev**2, np.float32(0)) ** HALF * pred_epsilon
        prev_sample = alpha_prod_prev**HALF * pred_original + direction
        if eta <= 0:
            return prev_sample
        noise = self.need_generator(generator, "ddim").randn(model_output.shape)
        return (prev_sample + std_dev * noise).astype(np.float32)
