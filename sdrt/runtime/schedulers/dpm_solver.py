"""DPM-Solver++ (2M by default: second order, multistep), as `diffusers.DPMSolverMultistepScheduler`
with algorithm_type "dpmsolver++"."""

from __future__ import annotations

import numpy as np

from sdrt.errors import ConfigError
from sdrt.runtime.rng import TorchGenerator
from sdrt.runtime.schedulers.config import SchedulerConfig
from sdrt.runtime.schedulers.multistep import MULTISTEP_DEFAULTS, MultistepScheduler


class DPMSolverMultistepScheduler(MultistepScheduler):
    """DPM-Solver++ (2M by default: second order, multistep), as
    `diffusers.DPMSolverMultistepScheduler` with algorithm_type "dpmsolver++". Each step's
    float32 coefficients are computed once in set_timesteps."""

    reference_name = "DPMSolverMultistepScheduler"
    config_defaults = {**MULTISTEP_DEFAULTS, "solver_type": "midpoint", "euler_at_final": False}
    refused_keys = ("use_beta_sigmas", "thresholding", "algorithm_type", "use_lu_lambdas", "use_flow_sigmas")
    #: Below this many steps diffusers lowers the order of the last steps (lower_order_final).
    LOWER_ORDER_FINAL_BELOW = 15

    def __init__(self, config: SchedulerConfig):
        super().__init__(config)
        if config.solver_order > 2:
            raise ConfigError(f"DPM++ solver_order {config.solver_order} is not supported; sdrt implements 1 and 2")
        if config.solver_type not in ("midpoint", "heun"):
            raise ConfigError(f"DPM++ solver_type {config.solver_type!r} is not supported; use midpoint or heun")
        # diffusers rounds Karras timesteps except for the cosine schedule.
        self.karras_rounds = config.beta_schedule != "squaredcos_cap_v2"
        self._previous_x0: np.ndarray | None = None

    def _plan_solver(self) -> None:
        """Per step: its order and the float32 coefficients of x_t = a*x + b*D0 + c*D1."""
        one, half = np.float32(1.0), np.float32(0.5)
        alpha, sigma, lambdas = self.alpha_t, self.sigma_t, self.lambdas
        self._previous_x0 = None
        count, config = self.num_inference_steps, self.config
        self.orders = np.ones(count, dtype=np.int64)
        self.coefficients = np.zeros((count, 3), dtype=np.float32)
        for i in range(count):
            last = i == count - 1
            lower_final = last and (
                config.euler_at_final
                or config.final_sigmas_type == "zero"
                or (config.lower_order_final and count < self.LOWER_ORDER_FINAL_BELOW)
            )
            # (diffusers' "lower_order_second" only demotes third-order steps, which sdrt lacks.)
            second = config.solver_order == 2 and i >= 1 and not lower_final
            h = lambdas[i + 1] - lambdas[i]
            with np.errstate(over="ignore", invalid="ignore"):
                ratio = sigma[i + 1] / sigma[i]
                weight = -(alpha[i + 1] * (np.exp(-h) - one))
            self.coefficients[i, 0] = ratio
            self.coefficients[i, 1] = weight
            if second:
                self.orders[i] = 2
                r0 = (lambdas[i] - lambdas[i - 1]) / h
                if config.solver_type == "midpoint":
                    self.coefficients[i, 2] = -half * (alpha[i + 1] * (np.exp(-h) - one)) * (one / r0)
                else:
                    self.coefficients[i, 2] = (alpha[i + 1] * ((np.exp(-h) - one) / h + one)) * (one / r0)

    def step(
        self, model_output: np.ndarray, step_index: int, sample: np.ndarray, generator: TorchGenerator | None = None
    ) -> np.ndarray:
        x0 = self.data_prediction(model_output, step_index, sample)
        ratio, weight, second = self.coefficients[step_index]
        # The first step of a run is first order, also when it starts mid-schedule (img2img).
        if self.orders[step_index] == 2 and self._previous_x0 is not None:
            # diffusers: ratio*x - (alpha*(e^-h - 1))*D0 - 0.5*(alpha*(e^-h - 1))*D1, D1 = (m0 - m1)/r0
            prev_sample = ratio * sample + weight * x0 + second * (x0 - self._previous_x0)
        else:
            prev_sample = ratio * sample + weight * x0
        self._previous_x0 = x0
        return prev_sample
