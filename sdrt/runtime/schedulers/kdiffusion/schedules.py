"""A1111's schedule types for the k-diffusion samplers (its `sd_schedulers.py`), each computed
as A1111 computes it from the model's sigma table, with the ComfyUI scheduler names that take
the same place. Every schedule gives the noise levels of the steps and a final level (0 for all
but KL Optimal, which ends at the model's smallest sigma, as A1111's does).

"automatic" is not a rule of its own: it is the sampler's own default (Karras for DPM++ 2M,
Exponential for the SDE samplers, ..., as A1111's sampler table says), else "uniform"
(k-diffusion's get_sigmas).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sdrt.errors import ConfigError
from sdrt.runtime.schedulers.kdiffusion.beta_quantile import beta_quantile
from sdrt.runtime.schedulers.kdiffusion.model_sigmas import ModelSigmas
from sdrt.runtime.schedulers.tables import KARRAS_RHO, linspace_float32

POLYEXPONENTIAL_RHO = 1.0
#: A1111's defaults for the Beta schedule's distribution (options beta_dist_alpha / beta).
BETA_ALPHA = 0.6
BETA_BETA = 0.6
#: Align Your Steps' published noise levels (NVIDIA's 10-step schedules), SD 1.5 and SDXL.
AYS_SD15 = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
AYS_SDXL = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)

AUTOMATIC = "automatic"
UNIFORM = "uniform"


@dataclass(frozen=True)
class ScheduleShape:
    """What A1111's get_sigmas hands a schedule function besides the steps: the sigma range (the
    model's unless its options say otherwise), rho (None: the function's own) and the Beta
    distribution's parameters (sdrt.runtime.schedulers.kdiffusion.a1111_settings)."""

    sigma_min: float
    sigma_max: float
    rho: float | None = None
    beta_alpha: float = BETA_ALPHA
    beta_beta: float = BETA_BETA

    @classmethod
    def of(cls, model: ModelSigmas) -> ScheduleShape:
        """The model's range and every function's defaults."""
        return cls(model.sigma_min, model.sigma_max)


#: (steps, the model's sigmas, whether it is SDXL, the shape) -> float32 levels with the final one.
ScheduleRule = Callable[[int, ModelSigmas, bool, ScheduleShape], np.ndarray]


def _with_zero(values) -> np.ndarray:
    return np.append(np.asarray(values, dtype=np.float32), np.float32(0)).astype(np.float32)


def karras(n: int, model: ModelSigmas, sdxl: bool, shape: ScheduleShape) -> np.ndarray:
    rho = KARRAS_RHO if shape.rho is None else shape.rho
    ramp = linspace_float32(0, 1, n)
    low, high = shape.sigma_min ** (1 / rho), shape.sigma_max ** (1 / rho)
    return _with_zero((np.float32(high) + ramp * np.float32(low - high)) ** np.float32(rho))


def exponential(n: int, model: ModelSigmas, sdxl: bool, shape: ScheduleShape) -> np.ndarray:
    return _with_zero(np.exp(linspace_float32(math.log(shape.sigma_max), math.log(shape.sigma_min), n)))


def polyexponential(n: int, model: ModelSigmas, sdxl: bool, shape: ScheduleShape) -> np.ndarray:
    rho = POLYEXPONENTIAL_RHO if shape.rho is None else shape.rho
    ramp = linspace_float32(1, 0, n) ** np.float32(rho)
    low, high = math.log(shape.sigma_min), math.log(shape.sigma_max)
    return _with_zero(np.exp(ramp * np.float32(high - low) + np.float32(low)))


def _timestep_range(shape: ScheduleShape, model: ModelSigmas, count: int) -> np.ndarray:
    start, end = model.sigma_to_t(shape.sigma_max), model.sigma_to_t(shape.sigma_min)
    return linspace_float32(float(start), float(end), count)


def sgm_uniform(n: int, model: ModelSigmas, sdxl: bool, shape: ScheduleShape) -> np.ndarray:
    return _with_zero(model.t_to_sigma(_timestep_range(shape, model, n + 1)[:-1]))


def normal(n: int, model: ModelSigmas, sdxl: bool, shape: ScheduleShape) -> np.ndarray:
    return _with_zero(model.t_to_sigma(_timestep_range(shape, model, n)))


def kl_optimal(n: int, model: ModelSigmas, sdxl: bool, shape: ScheduleShape) -> np.ndarray:
    angle_min, angle_max = np.arctan(np.float32(shape.sigma_min)), np.arctan(np.float32(shape.sigma_max))
    fraction = np.arange(n + 1, dtype=np.float32) / np.float32(n)
    return np.tan(fraction * angle_min + (np.float32(1) - fraction) * angle_max).astype(np.float32)


def align_your_steps(n: int, model: ModelSigmas, sdxl: bool, shape: ScheduleShape) -> np.ndarray:
    levels = np.array(AYS_SDXL if sdxl else AYS_SD15, dtype=np.float64)
    if n == len(levels):
        return _with_zero(levels)
    # Interpolated in log-sigma over an even grid (NVIDIA's loglinear_interp).
    rising = np.log(levels[::-1])
    grid = np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(levels)), rising)
    return _with_zero(np.exp(grid)[::-1])


def simple(n: int, model: ModelSigmas, sdxl: bool, shape: ScheduleShape) -> np.ndarray:
    stride = len(model.sigmas) / n
    return _with_zero([model.sigmas[-(1 + int(x * stride))] for x in range(n)])


def ddim(n: int, model: ModelSigmas, sdxl: bool, shape: ScheduleShape) -> np.ndarray:
    """Every stride-th training sigma from timestep 1 up (so not always n levels)."""
    stride = max(len(model.sigmas) // n, 1)
    return _with_zero(model.sigmas[1::stride][::-1])


def beta(n: int, model: ModelSigmas, sdxl: bool, shape: ScheduleShape) -> np.ndarray:
    quantiles = [beta_quantile(q, shape.beta_alpha, shape.beta_beta) for q in 1 - np.linspace(0, 1, n)]
    return _with_zero([shape.sigma_min + q * (shape.sigma_max - shape.sigma_min) for q in quantiles])


@dataclass(frozen=True)
class KScheduleEntry:
    name: str  # sdrt's name (as A1111's API names it)
    label: str  # A1111's "Schedule type" label
    rule: ScheduleRule | None  # None: automatic (the sampler's default)
    comfy_name: str | None = None  # ComfyUI's scheduler name for it, if it has one
    default_rho: float | None = None  # A1111's default_rho: the schedules with a rho


_ENTRIES = (
    KScheduleEntry(AUTOMATIC, "Automatic", None),
    KScheduleEntry(UNIFORM, "Uniform", lambda n, model, sdxl, shape: model.uniform(n)),
    KScheduleEntry("karras", "Karras", karras, "karras", default_rho=KARRAS_RHO),
    KScheduleEntry("exponential", "Exponential", exponential, "exponential"),
    KScheduleEntry("polyexponential", "Polyexponential", polyexponential, default_rho=POLYEXPONENTIAL_RHO),
    KScheduleEntry("sgm_uniform", "SGM Uniform", sgm_uniform, "sgm_uniform"),
    KScheduleEntry("kl_optimal", "KL Optimal", kl_optimal, "kl_optimal"),
    KScheduleEntry("align_your_steps", "Align Your Steps", align_your_steps),
    KScheduleEntry("simple", "Simple", simple, "simple"),
    KScheduleEntry("normal", "Normal", normal, "normal"),
    KScheduleEntry("ddim", "DDIM", ddim, "ddim_uniform"),
    KScheduleEntry("beta", "Beta", beta, "beta"),
)
#: The k-diffusion samplers' schedule types, by sdrt name.
K_SCHEDULES: dict[str, KScheduleEntry] = {entry.name: entry for entry in _ENTRIES}
K_SCHEDULE_NAMES = tuple(K_SCHEDULES)
_BY_ANY_NAME = {
    **{entry.label.lower(): entry for entry in _ENTRIES},
    **{entry.comfy_name: entry for entry in _ENTRIES if entry.comfy_name},
    **K_SCHEDULES,
}


def k_schedule_entry(name: str) -> KScheduleEntry:
    """A schedule type by sdrt name, A1111 label or ComfyUI name (ConfigError if none)."""
    entry = _BY_ANY_NAME.get(str(name).strip().lower()) or _BY_ANY_NAME.get(str(name).strip().lower().replace(" ", "_"))
    if entry is None:
        raise ConfigError(
            f"unknown schedule type {name!r} for a k-diffusion sampler; choose one of {', '.join(K_SCHEDULE_NAMES)}"
        )
    return entry


def resolved_schedule(name: str, default: str) -> KScheduleEntry:
    """Schedule `name`'s entry ("automatic": the sampler's `default`)."""
    entry = k_schedule_entry(name)
    return K_SCHEDULES[default] if entry.rule is None else entry


def schedule_sigmas(
    name: str, default: str, n: int, model: ModelSigmas, sdxl: bool = False, shape: ScheduleShape | None = None
) -> np.ndarray:
    """The noise levels of schedule `name` for `n` steps ("automatic": the sampler's `default`), of
    `shape` (default: the model's range, every function's defaults)."""
    entry = resolved_schedule(name, default)
    assert entry.rule is not None
    return entry.rule(n, model, sdxl, ScheduleShape.of(model) if shape is None else shape)
