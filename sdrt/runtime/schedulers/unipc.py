"""UniPC (a unified predictor-corrector on the data prediction, B(h) variants), as
`diffusers.UniPCMultistepScheduler`."""

from __future__ import annotations

import numpy as np

from sdrt.errors import ConfigError
from sdrt.runtime.rng import TorchGenerator
from sdrt.runtime.schedulers.config import SchedulerConfig
from sdrt.runtime.schedulers.multistep import MULTISTEP_DEFAULTS, MultistepScheduler


class UniPCMultistepScheduler(MultistepScheduler):
    """UniPC (a unified predictor-corrector on the data prediction, B(h) variants), as
    `diffusers.UniPCMultistepScheduler`: each step first corrects the sample the previous step
    predicted, using the new model output (UniC), then predicts the next sample from the stored
    data predictions (UniP). Noise levels and timesteps follow DPM++'s spacing rules; every
    step's coefficients are computed once per (step, order)."""

    reference_name = "UniPCMultistepScheduler"
    config_defaults = {**MULTISTEP_DEFAULTS, "solver_type": "bh2", "predict_x0": True, "disable_corrector": ()}
    refused_keys = ("use_beta_sigmas", "thresholding", "use_flow_sigmas")
    #: DPM++'s solver types, which diffusers' UniPC reads as bh2.
    BH2_ALIASES = ("midpoint", "heun")
    MAX_ORDER = 3
    final_from_schedule = True

    def __init__(self, config: SchedulerConfig):
        super().__init__(config)
        self.solver_type = "bh2" if config.solver_type in self.BH2_ALIASES else config.solver_type
        if not config.predict_x0:
            raise ConfigError("UniPC with predict_x0 false (noise prediction) is not supported")
        if config.disable_corrector:
            raise ConfigError("UniPC's disable_corrector is not supported")
        if not 1 <= config.solver_order <= self.MAX_ORDER:
            raise ConfigError(f"UniPC solver_order must be 1 to {self.MAX_ORDER}, got {config.solver_order}")
        self._plan_solver()

    def _plan_solver(self) -> None:
        """Coefficients are computed on first use per (step, order) (_update); reset them and
        the history."""
        self._x0s: list[np.ndarray] = []  # data predictions, newest last
        self._last_sample: np.ndarray | None = None
        self._last_order = 0
        self._coefficients: dict[tuple, tuple] = {}

    def _update(self, source: int, target: int, order: int, corrector: bool) -> tuple:
        """Coefficients of one UniP (predictor) or UniC (corrector) update from step `source`
        to noise level `target` of the given order: (sample ratio, m0 weight, B(h) weight, the
        rhos, the r_k of the older predictions). Cached: each is computed once per run."""
        key = (source, target, order, corrector)
        if key in self._coefficients:
            return self._coefficients[key]
        one = np.float32(1.0)
        lam, alpha, sigma = self.lambdas, self.alpha_t, self.sigma_t
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            h = lam[target] - lam[source]
            rks = [np.float32((lam[source - k] - lam[source]) / h) for k in range(1, order)]
            hh = -h
            h_phi_1 = np.expm1(hh)
            b_h = hh if self.solver_type == "bh1" else np.expm1(hh)
            h_phi_k = h_phi_1 / hh - one
            factorial, b = 1, []
            for i in range(1, order + 1):
                b.append(np.float32(h_phi_k * np.float32(factorial) / b_h))
                factorial *= i + 1
                h_phi_k = h_phi_k / hh - one / np.float32(factorial)
            ratio = sigma[target] / sigma[source]
            m0_weight = -alpha[target] * h_phi_1
            b_weight = -alpha[target] * b_h
        r = np.array(rks + [one], dtype=np.float64)
        matrix = np.stack([r**power for power in range(order)])
        if corrector:
            rhos = np.array([0.5]) if order == 1 else np.linalg.solve(matrix, np.array(b, np.float64))
        elif order == 1:
            rhos = np.zeros(0)
        elif order == 2:
            rhos = np.array([0.5])
        else:
            rhos = np.linalg.solve(matrix[:-1, :-1], np.array(b[:-1], np.float64))
        result = (np.float32(ratio), np.float32(m0_weight), np.float32(b_weight), rhos.astype(np.float32), rks)
        self._coefficients[key] = result
        return result

    def step(
        self, model_output: np.ndarray, step_index: int, sample: np.ndarray, generator: TorchGenerator | None = None
    ) -> np.ndarray:
        x0 = self.data_prediction(model_output, step_index, sample)
        if self._last_sample is not None:  # UniC: correct this step's sample with the new output
            order = self._last_order
            ratio, m0_weight, b_weight, rhos, rks = self._update(step_index - 1, step_index, order, corrector=True)
            m0 = self._x0s[-1]
            correction = rhos[-1] * (x0 - m0)
            for k, rk in enumerate(rks, start=1):
                correction = correction + rhos[k - 1] * ((self._x0s[-(k + 1)] - m0) / rk)
            sample = ratio * self._last_sample + m0_weight * m0 + b_weight * correction
        self._x0s = (self._x0s + [x0])[-self.config.solver_order :]
        order = self.config.solver_order
        if self.config.lower_order_final:
            order = min(order, self.num_inference_steps - step_index)
        order = min(order, len(self._x0s))  # warm-up: as many predictions as this run has made
        ratio, m0_weight, b_weight, rhos, rks = self._update(step_index, step_index + 1, order, corrector=False)
        prev_sample = ratio * sample + m0_weight * x0
        if rks:
            prediction = sum(
                rho * ((self._x0s[-(k + 1)] - x0) / rk) for k, (rho, rk) in enumerate(zip(rhos, rks), start=1)
            )
            prev_sample = prev_sample + b_weight * prediction
        self._last_sample, self._last_order = sample, order
        return prev_sample
