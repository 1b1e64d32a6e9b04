"""DPM++ 2M and UniPC on flow-matching models (SD3, FLUX): diffusers' DPMSolverMultistepScheduler
and UniPCMultistepScheduler with use_flow_sigmas and prediction_type "flow_prediction". The
update rules are sdrt's dpm_solver.py and unipc.py unchanged; only the schedule and the two
tables differ: alpha_t = 1 - sigma, sigma_t = sigma (so lambda = log((1 - sigma) / sigma)),
timesteps sigma * num_train_timesteps truncated to whole numbers (diffusers stores them as
int64), the model's velocity converted to x0 = sample - sigma * velocity.

The shift: `flow_shift`, which a model's FlowMatchEuler scheduler file lacks; sdrt takes the
file's `shift` for it then (SD3's 3.0), which diffusers does only when told
(from_config(config, flow_shift=config["shift"])). With use_dynamic_shifting the pipeline's mu
shifts instead: DPM++ by flow_shift = exp(mu), UniPC by the time shift of time_shift_type.
Both classes lack the scheduler file's base/max shift keys, so the pipelines' calculate_shift
falls back to its defaults, which are sdrt's neutral values (config.NEUTRAL_CONFIG): mu is
computed from those, as in FluxPipeline.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from sdrt.errors import ConfigError
from sdrt.runtime.schedulers.base import Scheduler
from sdrt.runtime.schedulers.config import BETA_DEFAULTS
from sdrt.runtime.schedulers.dpm_solver import DPMSolverMultistepScheduler
from sdrt.runtime.schedulers.flow import checked_mu, dynamic_shift_mu, shift_sigmas, stretch_to_terminal, time_shift
from sdrt.runtime.schedulers.multistep import MultistepScheduler
from sdrt.runtime.schedulers.spaces import FLOW, FLOW_PREDICTION
from sdrt.runtime.schedulers.tables import training_sigmas
from sdrt.runtime.schedulers.unipc import UniPCMultistepScheduler

#: What the flow variants read, on top of the solvers' own keys (the diffusion schedule options
#: timestep_spacing, Karras and exponential sigmas do not apply to flow sigmas: refused).
FLOW_MULTISTEP_DEFAULTS: dict[str, Any] = {
    **BETA_DEFAULTS,
    "prediction_type": FLOW_PREDICTION,
    "final_sigmas_type": "zero",
    "solver_order": 2,
    "lower_order_final": True,
    "use_flow_sigmas": True,
    "flow_shift": 1.0,
    "use_dynamic_shifting": False,
    "time_shift_type": "exponential",
}
FLOW_MULTISTEP_UNSUPPORTED: dict[str, tuple[Any, str]] = {
    "use_flow_sigmas": (False, "the flow-matching DPM++ and UniPC samplers need use_flow_sigmas"),
    "use_karras_sigmas": (True, "use_karras_sigmas does not apply to flow sigmas (use_flow_sigmas)"),
    "use_exponential_sigmas": (True, "use_exponential_sigmas does not apply to flow sigmas (use_flow_sigmas)"),
    "use_beta_sigmas": (True, "use_beta_sigmas does not apply to flow sigmas (use_flow_sigmas)"),
    "thresholding": (True, "dynamic thresholding (for pixel-space models) is not supported"),
}
#: diffusers' UniPC moves a first sigma of 1 this far below it (log(1 - sigma) would be -inf).
UNIPC_FIRST_SIGMA_EPS = 1e-6


def whole_timesteps(sigmas: np.ndarray, n_train: int) -> np.ndarray:
    """sigma * num_train_timesteps in float64, truncated as torch's cast to int64, as float32."""
    return (sigmas * n_train).astype(np.int64).astype(np.float32)


class FlowSigmas(MultistepScheduler):
    """The flow schedule and tables of a multistep solver (mixed in before the solver class)."""

    space = FLOW
    refused_keys = tuple(FLOW_MULTISTEP_UNSUPPORTED)
    unsupported_values = FLOW_MULTISTEP_UNSUPPORTED
    mu: float | None = None
    #: Whether set_timesteps takes custom sigmas (diffusers' UniPC does with use_flow_sigmas).
    takes_custom_sigmas: ClassVar[bool] = False
    custom_sigmas: np.ndarray | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Scheduler:
        """As every sampler; a model file's `shift` stands in for a missing `flow_shift`."""
        settings = dict(config) if isinstance(config, Mapping) else config
        if isinstance(settings, dict) and settings.get("flow_shift") is None and settings.get("shift") is not None:
            settings["flow_shift"] = settings["shift"]
        return super().from_config(settings)

    def dynamic_shift_mu(self, image_seq_len: int) -> float:
        """The mu FluxPipeline / StableDiffusion3Pipeline pass (from calculate_shift's defaults)."""
        return dynamic_shift_mu(self.config, image_seq_len)

    def set_timesteps(self, num_inference_steps: int, mu: float | None = None, sigmas=None) -> None:
        """The flow samplers' signature: `mu` with use_dynamic_shifting (required there). Custom
        `sigmas` where the diffusers class takes them (UniPC: they set the step count and are
        shifted as its own linspace); FluxPipeline drops its own for use_flow_sigmas schedulers,
        so the family never passes them (`takes_sigmas` stays False)."""
        self.custom_sigmas = None
        if sigmas is not None:
            if not self.takes_custom_sigmas:
                raise ConfigError(f"{self.reference_name} with flow sigmas takes no custom sigmas in sdrt")
            custom = np.asarray(sigmas, dtype=np.float64)
            if custom.ndim != 1 or not len(custom) or not np.all(np.isfinite(custom)):
                raise ConfigError("custom sigmas must be a non-empty list of finite numbers")
            self.custom_sigmas, num_inference_steps = custom, len(custom)
        self.mu = checked_mu(self.config, mu)
        super().set_timesteps(num_inference_steps)

    def _signal_and_noise(self, sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.float32(1.0) - sigmas, sigmas.copy()


class FlowDPMSolverMultistepScheduler(FlowSigmas, DPMSolverMultistepScheduler):
    """DPM++ 2M on flow sigmas: 1 - linspace(1, 1 / num_train_timesteps, steps + 1), shifted,
    reversed, the last (0) dropped, then the final level."""

    config_defaults = {**FLOW_MULTISTEP_DEFAULTS, "solver_type": "midpoint", "euler_at_final": False}
    refused_keys = (*FlowSigmas.refused_keys, "algorithm_type")

    def __init__(self, config):
        super().__init__(config)
        if config.use_dynamic_shifting and config.time_shift_type != "exponential":
            raise ConfigError("DPM++ with flow sigmas shifts by exp(mu): time_shift_type must be exponential")

    def _schedule(self, num_inference_steps: int) -> tuple[np.ndarray, np.ndarray]:
        config = self.config
        n_train = config.num_train_timesteps
        shift = np.exp(self.mu) if self.mu is not None else float(config.flow_shift)
        rising = 1.0 - np.linspace(1, 1 / n_train, num_inference_steps + 1)
        sigmas = np.flip(shift_sigmas(rising, shift))[:-1].copy()
        final = float(training_sigmas(self.alphas_cumprod)[0]) if config.final_sigmas_type == "sigma_min" else 0.0
        return np.append(sigmas, final).astype(np.float32), whole_timesteps(sigmas, n_train)


class FlowUniPCMultistepScheduler(FlowSigmas, UniPCMultistepScheduler):
    """UniPC on flow sigmas: linspace(1, 1 / num_train_timesteps, steps + 1) without its last,
    shifted (by flow_shift, or mu's time shift), optionally stretched to shift_terminal; custom
    sigmas stand for the linspace (UniPCMultistepScheduler.set_timesteps(sigmas=...))."""

    takes_custom_sigmas = True

    config_defaults = {
        **FLOW_MULTISTEP_DEFAULTS,
        "solver_type": "bh2",
        "predict_x0": True,
        "disable_corrector": (),
        "shift_terminal": None,
    }

    def _schedule(self, num_inference_steps: int) -> tuple[np.ndarray, np.ndarray]:
        config = self.config
        n_train = config.num_train_timesteps
        sigmas = np.linspace(1, 1 / n_train, num_inference_steps + 1)[:-1]
        if self.custom_sigmas is not None:
            sigmas = self.custom_sigmas.copy()
        if config.use_dynamic_shifting:
            sigmas = time_shift(config.time_shift_type, self.mu, sigmas)
        else:
            sigmas = shift_sigmas(sigmas, float(config.flow_shift))
        if config.shift_terminal:
            sigmas = stretch_to_terminal(sigmas, config.shift_terminal)
        sigmas = np.array(sigmas, dtype=np.float64)
        if abs(sigmas[0] - 1) < UNIPC_FIRST_SIGMA_EPS:
            sigmas[0] -= UNIPC_FIRST_SIGMA_EPS
        final = float(sigmas[-1]) if config.final_sigmas_type == "sigma_min" else 0.0
        return np.append(sigmas, final).astype(np.float32), whole_timesteps(sigmas, n_train)
