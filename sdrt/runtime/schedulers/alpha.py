"""The base of the samplers that step on alpha_bar(t) directly (DDIM, DDPM, PNDM, LCM, TCD):
whole-number timesteps, unscaled model input, unit initial noise."""

from __future__ import annotations

import numpy as np

from sdrt.runtime.schedulers.base import HALF, Scheduler, predict_x0
from sdrt.runtime.schedulers.config import SchedulerConfig
from sdrt.runtime.schedulers.tables import compute_alphas_cumprod, training_sigmas


class AlphaTableScheduler(Scheduler):
    """Samplers addressing alphas_cumprod by integer timestep."""

    def __init__(self, config: SchedulerConfig):
        super().__init__(config)
        self.alphas_cumprod = compute_alphas_cumprod(config, zero_snr_floor=False)

    @property
    def init_noise_sigma(self) -> float:
        return 1.0

    def scale_model_input(self, sample: np.ndarray, step_index: int) -> np.ndarray:
        return sample

    def set_levels(self, alpha_prods: np.ndarray, final_alpha_prod) -> None:
        """`sigmas` (the interface's noise levels) of each call's alpha_bar and of the alpha_bar
        the last step leaves; the update itself reads its own alpha tables."""
        self.sigmas = training_sigmas(np.append(alpha_prods, final_alpha_prod).astype(np.float32))

    def add_noise(self, original: np.ndarray, noise: np.ndarray, step_index: int) -> np.ndarray:
        alpha_prod = self.alphas_cumprod[int(self.timesteps[step_index])]
        return alpha_prod**HALF * original + (1 - alpha_prod) ** HALF * noise

    def x0(self, model_output: np.ndarray, sample: np.ndarray, alpha_prod, beta_prod) -> np.ndarray:
        """x0 at alpha_bar = alpha_prod (beta_prod = 1 - alpha_prod), clipped if configured."""
        return predict_x0(
            self.config.prediction_type, model_output, sample, beta_prod**HALF, alpha_prod**HALF, clip=self.clip
        )
