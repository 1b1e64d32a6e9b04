"""The scheduler settings sdrt reads from a diffusers `scheduler_config.json`, validated once.

Each sampler class lists the keys its diffusers namesake accepts (`config_defaults`, with that
class's own defaults) and the further keys whose unsupported values sdrt refuses
(`refused_keys`). Keys the class does not read (another scheduler's, such as PNDM's
`skip_prk_steps` in a file saved by PNDM) take neutral values, as diffusers' `from_config`
ignores them.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, fields
from typing import Any

from sdrt.errors import ConfigError
from sdrt.runtime.schedulers.spaces import PREDICTION_TYPES

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")
INTERPOLATION_TYPES = ("linear", "log_linear")
SOLVER_TYPES = ("midpoint", "heun", "bh1", "bh2")  # DPM++'s, then UniPC's
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large")
SOLVER_ORDERS = (1, 2, 3)
#: Flow matching's resolution-dependent shifts of the sigmas by mu (diffusers' time_shift_type).
TIME_SHIFT_TYPES = ("exponential", "linear")
#: A bound on num_train_timesteps: every table is this long, and real models use 1000.
MAX_TRAIN_TIMESTEPS = 100_000

#: Refused values of keys some diffusers classes accept: key -> (refused value, message).
UNSUPPORTED_VALUES: dict[str, tuple[Any, str]] = {
    "use_beta_sigmas": (True, "use_beta_sigmas is not supported; use use_karras_sigmas instead"),
    "thresholding": (True, "dynamic thresholding (for pixel-space models) is not supported"),
    "timestep_type": ("continuous", "continuous timesteps are not supported"),
    "use_lu_lambdas": (True, "use_lu_lambdas is not supported"),
    "use_flow_sigmas": (
        True,
        "use_flow_sigmas is for flow-matching models: use the flow samplers (flow_dpmpp_2m, flow_unipc)",
    ),
}
#: The one DPM-Solver algorithm sdrt implements.
SUPPORTED_ALGORITHM = "dpmsolver++"


@dataclass(frozen=True)
class SchedulerConfig:
    """The fields of a diffusers `scheduler_config.json` that sdrt's samplers read."""

    num_train_timesteps: int
    beta_start: float
    beta_end: float
    beta_schedule: str
    trained_betas: tuple[float, ...] | None
    prediction_type: str
    timestep_spacing: str
    steps_offset: int
    use_karras_sigmas: bool
    use_exponential_sigmas: bool
    rescale_betas_zero_snr: bool
    final_sigmas_type: str
    interpolation_type: str
    sigma_min: float | None
    sigma_max: float | None
    clip_sample: bool
    clip_sample_range: float
    set_alpha_to_one: bool
    solver_order: int
    solver_type: str
    lower_order_final: bool
    euler_at_final: bool
    skip_prk_steps: bool
    variance_type: str
    predict_x0: bool
    disable_corrector: tuple[int, ...]
    original_inference_steps: int
    timestep_scaling: float
    shift: float
    use_dynamic_shifting: bool
    base_shift: float
    max_shift: float
    base_image_seq_len: int
    max_image_seq_len: int
    time_shift_type: str
    shift_terminal: float | None
    use_flow_sigmas: bool
    flow_shift: float

    @classmethod
    def from_dict(
        cls,
        config: Mapping[str, Any],
        defaults: Mapping[str, Any],
        refused_keys: Collection[str] = (),
        unsupported: Mapping[str, tuple[Any, str]] = UNSUPPORTED_VALUES,
    ) -> SchedulerConfig:
        """The fields a class reads (`defaults`) from `config`, the others neutral; values of
        `refused_keys` that sdrt does not implement (`unsupported`: key -> (value, message))
        are a ConfigError."""
        if not isinstance(config, Mapping):
            raise ConfigError(f"a scheduler config must be a JSON object, got {type(config).__name__}")
        values = {}
        for field in fields(cls):
            if field.name in defaults:
                value = config.get(field.name)
                values[field.name] = defaults[field.name] if value is None else value
            else:
                values[field.name] = NEUTRAL_CONFIG[field.name]
        try:
            if values["trained_betas"] is not None:
                values["trained_betas"] = tuple(float(b) for b in values["trained_betas"])
            values["disable_corrector"] = tuple(int(step) for step in values["disable_corrector"])
        except (TypeError, ValueError):
            raise ConfigError("scheduler trained_betas and disable_corrector must be lists of numbers") from None
        for key in refused_keys:
            if key in unsupported and config.get(key) == unsupported[key][0]:
                raise ConfigError(unsupported[key][1])
        algorithm = config.get("algorithm_type")
        if "algorithm_type" in refused_keys and algorithm not in (None, SUPPORTED_ALGORITHM):
            raise ConfigError(f"algorithm_type {algorithm!r} is not supported; sdrt implements {SUPPORTED_ALGORITHM}")
        for field in fields(cls):
            _check_type(field.name, field.type, values[field.name])
        result = cls(**values)
        result.validate()
        return result

    def validate(self) -> None:
        choices = {
            "beta_schedule": BETA_SCHEDULES,
            "prediction_type": PREDICTION_TYPES,
            "timestep_spacing": TIMESTEP_SPACINGS,
            "final_sigmas_type": FINAL_SIGMAS_TYPES,
            "interpolation_type": INTERPOLATION_TYPES,
            "solver_type": SOLVER_TYPES,
            "variance_type": VARIANCE_TYPES,
            "time_shift_type": TIME_SHIFT_TYPES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"scheduler {name} {getattr(self, name)!r} is not supported; choose one of {', '.join(allowed)}"
                )
        if (
            not isinstance(self.num_train_timesteps, int)
            or isinstance(self.num_train_timesteps, bool)
            or not 1 <= self.num_train_timesteps <= MAX_TRAIN_TIMESTEPS
        ):
            raise ConfigError(
                f"num_train_timesteps must be an integer from 1 to {MAX_TRAIN_TIMESTEPS}, "
                f"got {self.num_train_timesteps!r}"
            )
        for name in ("beta_start", "beta_end"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"scheduler {name} must be in [0, 1), got {getattr(self, name)!r}")
        if not 0 <= self.steps_offset < self.num_train_timesteps:
            raise ConfigError(
                f"scheduler steps_offset must be from 0 to num_train_timesteps - 1, got {self.steps_offset!r}"
            )
        if self.trained_betas is not None and not all(0 <= beta < 1 for beta in self.trained_betas):
            raise ConfigError("scheduler trained_betas must all be in [0, 1)")
        if self.trained_betas is not None and len(self.trained_betas) != self.num_train_timesteps:
            raise ConfigError(
                f"trained_betas has {len(self.trained_betas)} values, num_train_timesteps is {self.num_train_timesteps}"
            )
        if self.use_karras_sigmas and self.use_exponential_sigmas:
            raise ConfigError("use_karras_sigmas and use_exponential_sigmas exclude each other")
        if not 1 <= self.original_inference_steps <= self.num_train_timesteps:
            raise ConfigError(
                f"original_inference_steps must be from 1 to num_train_timesteps, got {self.original_inference_steps!r}"
            )
        if not self.timestep_scaling > 0:
            raise ConfigError(f"timestep_scaling must be positive, got {self.timestep_scaling!r}")
        if self.solver_order not in SOLVER_ORDERS:
            raise ConfigError(f"solver_order {self.solver_order} is not supported; sdrt implements 1 to 3")
        if not self.shift > 0:
            raise ConfigError(f"scheduler shift must be positive, got {self.shift!r}")
        if self.base_image_seq_len == self.max_image_seq_len:
            raise ConfigError(
                "scheduler base_image_seq_len and max_image_seq_len must differ (mu is interpolated between them)"
            )
        if not self.flow_shift > 0:
            raise ConfigError(f"scheduler flow_shift must be positive, got {self.flow_shift!r}")
        if self.shift_terminal is not None and not 0 <= self.shift_terminal < 1:
            raise ConfigError(f"scheduler shift_terminal must be in [0, 1), got {self.shift_terminal!r}")


# Values of the fields a sampler does not read (so they change nothing).
NEUTRAL_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "prediction_type": "epsilon",
    "timestep_spacing": "linspace",
    "steps_offset": 0,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "rescale_betas_zero_snr": False,
    "final_sigmas_type": "zero",
    "interpolation_type": "linear",
    "sigma_min": None,
    "sigma_max": None,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "set_alpha_to_one": False,
    "solver_order": 2,
    "solver_type": "midpoint",
    "lower_order_final": True,
    "euler_at_final": False,
    "skip_prk_steps": True,
    "variance_type": "fixed_small",
    "predict_x0": True,
    "disable_corrector": (),
    "original_inference_steps": 50,
    "timestep_scaling": 10.0,
    "shift": 1.0,
    "use_dynamic_shifting": False,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "time_shift_type": "exponential",
    "shift_terminal": None,
    "use_flow_sigmas": False,
    "flow_shift": 1.0,
}
#: What every diffusers scheduler reads, with its defaults.
BETA_DEFAULTS = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "prediction_type": "epsilon",
    "steps_offset": 0,
}


# Field annotations (strings: this module postpones annotations) -> the JSON types they take.
_JSON_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def _check_type(name: str, annotation: str, value: Any) -> None:
    """A scheduler config value of the wrong JSON type (or a non-finite number) is a ConfigError."""
    base, _, optional = annotation.partition(" | ")
    if value is None and optional == "None":
        return
    if base not in _JSON_TYPES:
        return  # tuples: converted and checked above
    is_bool = isinstance(value, bool)
    if (
        not isinstance(value, _JSON_TYPES[base])
        or (is_bool and base != "bool")
        or (base == "float" and not math.isfinite(value))
    ):
        raise ConfigError(
            f"scheduler config {name} must be {'a finite number' if base == 'float' else 'a ' + base}, got {value!r}"[
                :200
            ]
        )
