"""ComfyUI's model sampling of flow-matching models (comfy/model_sampling.py), the tables its
schedulers read for FLUX.1 and SD3:

- ModelSamplingDiscreteFlow (SD3, and any model ModelSamplingSD3 patches): 1000 levels
  sigma(t) = time_snr_shift(shift, t / multiplier) at t = (1..1000) / 1000 * multiplier, with
  time_snr_shift(a, t) = a t / (1 + (a - 1) t); the model's timestep is sigma * multiplier;
- ModelSamplingFlux (FLUX.1, and ModelSamplingFlux's patch): 10000 levels
  sigma(t) = flux_time_shift(shift, 1, t) = e^shift / (e^shift + (1 / t - 1)) at
  t = (1..10000) / 10000; the model's timestep is sigma itself.

Both tables are float32 as ComfyUI's torch buffers (float32 arithmetic on Python scalars).
Either is ComfyUI's CONST prediction: the model's output is the velocity, x0 = x - sigma * v.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sdrt.errors import ConfigError
from sdrt.runtime.schedulers.kdiffusion.comfy_schedules import ComfyModelSigmas

#: The two model samplings, by ComfyUI's class.
DISCRETE_FLOW = "ModelSamplingDiscreteFlow"
FLUX_SAMPLING = "ModelSamplingFlux"
FLOW_SAMPLINGS = (DISCRETE_FLOW, FLUX_SAMPLING)
#: The tables' lengths (ModelSamplingDiscreteFlow.set_parameters' and ModelSamplingFlux's timesteps).
TABLE_LENGTHS = {DISCRETE_FLOW: 1000, FLUX_SAMPLING: 10000}
#: ModelSamplingDiscreteFlow's default multiplier (ModelSamplingSD3 keeps it).
DEFAULT_MULTIPLIER = 1000.0


@dataclass(frozen=True)
class FlowModelSampling:
    """One of ComfyUI's flow model samplings: its class, shift and (discrete flow) multiplier."""

    kind: str
    shift: float
    multiplier: float = DEFAULT_MULTIPLIER

    def __post_init__(self):
        if self.kind not in FLOW_SAMPLINGS:
            raise ConfigError(f"unknown flow model sampling {self.kind!r}; choose one of {', '.join(FLOW_SAMPLINGS)}")
        if not math.isfinite(self.shift) or not math.isfinite(self.multiplier) or self.multiplier <= 0:
            raise ConfigError(f"the model sampling's shift and multiplier must be finite, got {self}")


class ComfyFlowSigmas(ComfyModelSigmas):
    """A flow model sampling's table, in the interface ComfyUI's schedulers read (comfy_schedules):
    `sigmas` ascending, sigma_min / sigma_max, `nearest_timestep` (its `timestep`: continuous
    here) and `t_to_sigma` (its `sigma`)."""

    def __init__(self, sampling: FlowModelSampling):
        self.sampling = sampling
        length = TABLE_LENGTHS[sampling.kind]
        fraction = np.arange(1, length + 1, dtype=np.float32) / np.float32(length)
        if sampling.kind == DISCRETE_FLOW:
            fraction = fraction * np.float32(sampling.multiplier)
        self.sigmas = self.t_to_sigma(fraction)
        self.log_sigmas = np.log(self.sigmas)

    def nearest_timestep(self, sigma) -> np.ndarray:
        """ComfyUI's timestep of a level: sigma * multiplier (discrete flow), sigma (FLUX)."""
        sigma = np.asarray(sigma, dtype=np.float32)
        if self.sampling.kind == DISCRETE_FLOW:
            return (sigma * np.float32(self.sampling.multiplier)).astype(np.float32)
        return sigma

    def t_to_sigma(self, t) -> np.ndarray:
        t = np.asarray(t, dtype=np.float32)
        shift = self.sampling.shift
        if self.sampling.kind == DISCRETE_FLOW:
            t = t / np.float32(self.sampling.multiplier)
            if shift == 1.0:
                return t
            return (shift * t / (1 + (shift - 1) * t)).astype(np.float32)
        with np.errstate(divide="ignore"):
            return (math.exp(shift) / (math.exp(shift) + (1 / t - 1))).astype(np.float32)
