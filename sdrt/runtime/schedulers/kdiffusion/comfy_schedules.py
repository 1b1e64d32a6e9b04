"""ComfyUI's noise levels (comfy/samplers.py, comfy/model_sampling.py): its model's sigma table,
its schedulers by their KSampler names, and its KSampler's cut of a schedule (denoise, the
advanced sampler's start and end steps).

ComfyUI's ModelSamplingDiscrete computes sigmas from the betas in float64 and keeps them (and
their logs) as float32; it calls the model at the nearest training timestep of a noise level
(argmin |log sigma - log sigmas|), where k-diffusion and A1111 interpolate a fractional one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from sdrt.errors import ConfigError
from sdrt.runtime.schedulers.config import SchedulerConfig
from sdrt.runtime.schedulers.kdiffusion import schedules as a1111
from sdrt.runtime.schedulers.kdiffusion.beta_quantile import beta_quantile
from sdrt.runtime.schedulers.kdiffusion.model_sigmas import ModelSigmas, model_alphas_cumprod
from sdrt.runtime.schedulers.tables import linspace_float32

if TYPE_CHECKING:
    from sdrt.runtime.schedulers.kdiffusion.comfy_flow_sigmas import FlowModelSampling

#: comfy/samplers.py's beta_scheduler defaults (alpha, beta) and linear_quadratic_schedule's threshold.
BETA_ALPHA = 0.6
BETA_BETA = 0.6
LINEAR_QUADRATIC_THRESHOLD = 0.025
#: normal_scheduler: a model whose last timestep's sigma is this close to 0 gets no appended zero.
ZERO_SIGMA_TOLERANCE = 1e-5
#: KSampler.set_steps: a denoise above this is a full schedule.
FULL_DENOISE = 0.9999


class ComfyModelSigmas(ModelSigmas):
    """ComfyUI's sigma table: float64 arithmetic rounded once, and its nearest-timestep rule."""

    def __init__(self, config: SchedulerConfig):
        alphas_cumprod = model_alphas_cumprod(config, np.float64)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.sigmas = sigmas.astype(np.float32)
        self.log_sigmas = np.log(sigmas).astype(np.float32)

    def nearest_timestep(self, sigma) -> np.ndarray:
        """ModelSamplingDiscrete.timestep: the training timestep nearest in log-sigma."""
        log_sigma = np.log(np.asarray(sigma, dtype=np.float32))
        distances = np.abs(log_sigma[..., None] - self.log_sigmas)
        return distances.argmin(axis=-1).astype(np.float32)


def _normal(n: int, model: ComfyModelSigmas, sgm: bool = False) -> np.ndarray:
    start, end = float(model.nearest_timestep(model.sigma_max)), float(model.nearest_timestep(model.sigma_min))
    append_zero = True
    if sgm:
        timesteps = linspace_float32(start, end, n + 1)[:-1]
    else:
        if math.isclose(float(model.t_to_sigma(end)), 0, abs_tol=ZERO_SIGMA_TOLERANCE):
            n, append_zero = n + 1, False
        timesteps = linspace_float32(start, end, n)
    levels = model.t_to_sigma(timesteps)
    return np.append(levels, np.float32(0)).astype(np.float32) if append_zero else levels


def _beta(n: int, model: ComfyModelSigmas) -> np.ndarray:
    last = len(model.sigmas) - 1
    quantiles = 1 - np.linspace(0, 1, n, endpoint=False)
    indices = np.rint(np.array([beta_quantile(float(q), BETA_ALPHA, BETA_BETA) for q in quantiles]) * last)
    kept = [int(t) for i, t in enumerate(indices) if i == 0 or t != indices[i - 1]]
    return np.append(model.sigmas[kept], np.float32(0)).astype(np.float32)


def _linear_quadratic(n: int, model: ComfyModelSigmas) -> np.ndarray:
    if n == 1:
        levels = [1.0, 0.0]
    else:
        threshold, linear = LINEAR_QUADRATIC_THRESHOLD, n // 2
        quadratic = n - linear
        difference = linear - threshold * n
        quadratic_coef = difference / (linear * quadratic**2)
        linear_coef = threshold / linear - 2 * difference / quadratic**2
        const = quadratic_coef * linear**2
        rising = [i * threshold / linear for i in range(linear)]
        rising += [quadratic_coef * i**2 + linear_coef * i + const for i in range(linear, n)]
        levels = [1.0 - x for x in [*rising, 1.0]]
    return (np.asarray(levels, dtype=np.float32) * np.float32(model.sigma_max)).astype(np.float32)


def _kl_optimal(n: int, model: ComfyModelSigmas) -> np.ndarray:
    """n levels from sigma_max to sigma_min evenly in arctan, then 0 (A1111's has n + 1, no 0)."""
    fraction = np.arange(n, dtype=np.float32) / np.float32(n - 1) if n > 1 else np.zeros(1, np.float32)
    angles = fraction * np.float32(math.atan(model.sigma_min)) + (1 - fraction) * np.float32(math.atan(model.sigma_max))
    return np.append(np.tan(angles), np.float32(0)).astype(np.float32)


ComfyRule = Callable[[int, ComfyModelSigmas], np.ndarray]
#: ComfyUI's SCHEDULER_HANDLERS, in its order (karras, exponential, simple and ddim_uniform are
#: A1111's rules exactly: both take them from k-diffusion or the same loop).
COMFY_SCHEDULERS: dict[str, ComfyRule] = {
    "simple": lambda n, model: a1111.simple(n, model, False, a1111.ScheduleShape.of(model)),
    "sgm_uniform": lambda n, model: _normal(n, model, sgm=True),
    "karras": lambda n, model: a1111.karras(n, model, False, a1111.ScheduleShape.of(model)),
    "exponential": lambda n, model: a1111.exponential(n, model, False, a1111.ScheduleShape.of(model)),
    "ddim_uniform": lambda n, model: a1111.ddim(n, model, False, a1111.ScheduleShape.of(model)),
    "beta": _beta,
    "normal": _normal,
    "linear_quadratic": _linear_quadratic,
    "kl_optimal": _kl_optimal,
}
COMFY_SCHEDULER_NAMES = tuple(COMFY_SCHEDULERS)


def check_comfy_scheduler(name: str) -> str:
    if name not in COMFY_SCHEDULERS:
        raise ConfigError(f"unknown ComfyUI scheduler {name!r}; choose one of {', '.join(COMFY_SCHEDULER_NAMES)}")
    return name


@dataclass(frozen=True)
class KSamplerSteps:
    """What ComfyUI's KSampler and KSamplerAdvanced do to a schedule and its noise: `denoise`
    (the last steps + 1 levels of a schedule of int(steps / denoise) steps), the advanced
    sampler's `start_step` / `last_step` (None: all), `force_full_denoise` (a cut schedule ends
    at 0), `add_noise` (off: the latents start as given), the seed of its sampler noise and the
    latent's noise mask."""

    denoise: float = 1.0
    start_step: int | None = None
    last_step: int | None = None
    force_full_denoise: bool = False
    add_noise: bool = True
    seed: int | None = None
    #: SetLatentNoiseMask's mask at the latents' size [batch or 1, 1, h, w]: 1 is denoised, 0 kept.
    noise_mask: np.ndarray | None = field(default=None, compare=False)
    #: A flow model's sampling (comfy_flow_sigmas.FlowModelSampling: ModelSamplingFlux / SD3's
    #: shift); None: the model's own.
    model_sampling: FlowModelSampling | None = None
    #: The latent's batch_index (LatentFromBatch, RepeatLatentBatch): which draw of the seed's
    #: generator each image's initial noise is (sdrt.runtime.rng.IndexedDraws); None: in order.
    noise_indices: tuple[int, ...] | None = None

    def cut(self, steps: int, schedule: Callable[[int], np.ndarray]) -> np.ndarray:
        """KSampler.set_steps then KSampler.sample's cut (empty: no step to run)."""
        if self.denoise <= 0:
            return np.zeros(0, np.float32)
        if self.denoise > FULL_DENOISE:
            sigmas = schedule(steps)
        else:
            sigmas = schedule(int(steps / self.denoise))[-(steps + 1) :]
        sigmas = np.array(sigmas, dtype=np.float32)
        if self.last_step is not None and self.last_step < len(sigmas) - 1:
            sigmas = sigmas[: self.last_step + 1]
            if self.force_full_denoise:
                sigmas[-1] = 0
        if self.start_step is not None:
            if self.start_step >= len(sigmas) - 1:
                return np.zeros(0, np.float32)
            sigmas = sigmas[self.start_step :]
        return sigmas


def comfy_sigmas(scheduler: str, steps: int, model: ComfyModelSigmas, discard_penultimate: bool) -> np.ndarray:
    """KSampler.calculate_sigmas: the scheduler's levels, with one step more and the next-to-
    last level dropped for the samplers ComfyUI lists (dpm_2, dpm_2_ancestral, uni_pc)."""
    rule = COMFY_SCHEDULERS[check_comfy_scheduler(scheduler)]
    if not discard_penultimate:
        return rule(steps, model)
    sigmas = rule(steps + 1, model)
    return np.concatenate([sigmas[:-2], sigmas[-1:]]).astype(np.float32)
