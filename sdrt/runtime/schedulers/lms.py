"""Linear multistep (Karras et al.'s LMS), as `diffusers.LMSDiscreteScheduler`."""

from __future__ import annotations

from collections import deque

import numpy as np

from sdrt.errors import ConfigError
from sdrt.runtime.rng import TorchGenerator
from sdrt.runtime.schedulers.config import SchedulerConfig
from sdrt.runtime.schedulers.sigma import SIGMA_DEFAULTS, SigmaScheduler


def lms_coefficients(sigmas: np.ndarray, order: int) -> np.ndarray:
    """Linear multistep weights: row i holds the integrals over [sigma_i, sigma_i+1] of the
    Lagrange basis polynomials through sigma_i, sigma_i-1, ... (newest derivative first).

    The integrands are polynomials, so they are integrated exactly (diffusers calls
    scipy.integrate.quad, which is exact on them up to rounding). Entries past a step's
    effective order, min(i + 1, order), are zero.
    """
    sigmas = sigmas.astype(np.float64)
    num_steps = len(sigmas) - 1
    repeated = np.flatnonzero(sigmas[1:-1] == sigmas[:-2])
    if order > 1 and num_steps > 1 and len(repeated):
        i = int(repeated[0])
        raise ConfigError(
            f"LMS cannot step this schedule: steps {i} and {i + 1} have the same noise level "
            f"(sigma {sigmas[i]:.6g}), which makes the multistep weights infinite; use fewer "
            "steps or another timestep_spacing"
        )
    table = np.zeros((num_steps, order), dtype=np.float64)
    for i in range(num_steps):
        effective = min(i + 1, order)
        lower, upper = sigmas[i], sigmas[i + 1]
        # Integrate in u = tau - lower to keep the polynomial's values small.
        nodes = sigmas[i - np.arange(effective)] - lower
        for j in range(effective):
            others = np.delete(nodes, j)
            antiderivative = np.polyint(np.atleast_1d(np.poly(others)))
            table[i, j] = np.polyval(antiderivative, upper - lower) / np.prod(nodes[j] - others)
    return table


class LMSDiscreteScheduler(SigmaScheduler):
    """LMS: each step integrates the Lagrange polynomial through the last `order` derivatives."""

    reference_name = "LMSDiscreteScheduler"
    config_defaults = SIGMA_DEFAULTS
    refused_keys = ("use_beta_sigmas",)
    #: How many past derivatives the multistep formula uses (diffusers' `step(order=4)`).
    default_order = 4

    def __init__(self, config: SchedulerConfig, order: int = default_order):
        super().__init__(config)
        if order < 1:
            raise ConfigError(f"LMS order must be >= 1, got {order}")
        self.order = order
        self.coefficients = np.zeros((0, order))
        self._derivatives: deque[np.ndarray] = deque(maxlen=order)
        self._last_index: int | None = None

    def _plan(self, num_inference_steps: int) -> None:
        self._compute_sigmas(num_inference_steps)
        try:
            self.coefficients = lms_coefficients(self.sigmas, self.order)
        except ConfigError as error:
            most = self.most_steps(num_inference_steps)
            raise ConfigError(f"{error} (at most {most} steps here)" if most else str(error)) from None
        self._derivatives.clear()
        self._last_index = None

    def most_steps(self, below: int) -> int | None:
        """The largest step count under `below` whose schedule repeats no noise level (which LMS's
        weights need), None if there is none; the scheduler is left planned for `below` steps."""
        found = None
        for steps in range(below - 1, 1, -1):
            self._compute_sigmas(steps)
            sigmas = self.sigmas.astype(np.float64)
            if not np.any(sigmas[1:-1] == sigmas[:-2]):
                found = steps
                break
        self._compute_sigmas(below)
        return found

    def step(
        self, model_output: np.ndarray, step_index: int, sample: np.ndarray, generator: TorchGenerator | None = None
    ) -> np.ndarray:
        if self._last_index is not None and step_index != self._last_index + 1:
            raise RuntimeError(
                f"LMS step {step_index} called after step {self._last_index}: "
                "steps must run in order on one scheduler object"
            )
        self._last_index = step_index
        self._derivatives.append(self.derivative(model_output, step_index, sample))
        # Newest derivative first, matching the coefficient columns; summed before it is added
        # to the sample, in the reference's order, so float32 rounding agrees. A run that starts
        # mid-schedule (image-to-image) has fewer derivatives than the row's order: zip stops
        # at the history there is, as diffusers does.
        terms = zip(self.coefficients[step_index], reversed(self._derivatives))
        coefficient, past = next(terms)
        update = float(coefficient) * past
        for coefficient, past in terms:
            update = update + float(coefficient) * past
        return sample + update
