"""NumPy noise schedulers with the numerics of their diffusers namesakes.

Every scheduler has one interface (`Scheduler`): `set_timesteps(n)` computes all tables once,
then the denoising loop calls, for step index `i`,

    model_input = scheduler.scale_model_input(sample, i)
    model_output = unet(model_input, scheduler.timesteps[i], ...)
    sample = scheduler.step(model_output, i, sample, noise=...)

`noise` is consumed only by stochastic samplers. Steps are addressed by index, not by timestep
value, so repeated timesteps (image-to-image, Karras schedules) are never ambiguous.

A scheduler object carries the history of one denoising run (LMS keeps its last derivatives):
use one object per generation. Construction and `set_timesteps` are cheap.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Mapping

import numpy as np

from sdrt.errors import ConfigError

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
# Largest beta of the cosine schedule (Nichol & Dhariwal), as diffusers clips it.
COSINE_MAX_BETA = 0.999
# Offset s of the cosine schedule alpha_bar(t) = cos((t + s) / (1 + s) * pi / 2) ** 2.
COSINE_OFFSET = 0.008
# Karras et al. (2022) schedule exponent.
KARRAS_RHO = 7.0
# Floor under sigma before its log when mapping sigmas back to timesteps.
LOG_SIGMA_FLOOR = 1e-10


@dataclass(frozen=True)
class SchedulerConfig:
    """The fields of a diffusers `scheduler_config.json` that the noise schedule depends on.

    Unknown keys (another scheduler's, such as PNDM's `skip_prk_steps`) are ignored and missing
    ones take the scheduler class's own defaults, as diffusers' `from_config` does.
    """

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

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], defaults: Mapping[str, Any]) -> "SchedulerConfig":
        values = {}
        for field in fields(cls):
            value = config.get(field.name)
            values[field.name] = defaults[field.name] if value is None else value
        if values["trained_betas"] is not None:
            values["trained_betas"] = tuple(float(b) for b in values["trained_betas"])
        if config.get("use_beta_sigmas"):
            raise ConfigError("use_beta_sigmas is not supported; use use_karras_sigmas instead")
        result = cls(**values)
        result.validate()
        return result

    def validate(self) -> None:
        choices = {
            "beta_schedule": BETA_SCHEDULES,
            "prediction_type": PREDICTION_TYPES,
            "timestep_spacing": TIMESTEP_SPACINGS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"scheduler {name} {getattr(self, name)!r} is not supported; "
                    f"choose one of {', '.join(allowed)}"
                )
        if self.num_train_timesteps < 1:
            raise ConfigError(f"num_train_timesteps must be >= 1, got {self.num_train_timesteps}")
        if self.trained_betas is not None and len(self.trained_betas) != self.num_train_timesteps:
            raise ConfigError(
                f"trained_betas has {len(self.trained_betas)} values, "
                f"num_train_timesteps is {self.num_train_timesteps}"
            )
        if self.use_karras_sigmas and self.use_exponential_sigmas:
            raise ConfigError("use_karras_sigmas and use_exponential_sigmas exclude each other")


def _linspace_float32(start: float, end: float, steps: int) -> np.ndarray:
    """`torch.linspace(start, end, steps, dtype=torch.float32)`, bit for bit.

    PyTorch fills the first half as start + step * i and the second as end - step * (n - 1 - i),
    with a fused multiply-add: float64 arithmetic rounded once to float32 reproduces it.
    """
    start32, end32 = np.float32(start), np.float32(end)
    if steps == 1:
        return np.array([start32], dtype=np.float32)
    step = np.float64((end32 - start32) / np.float32(steps - 1))
    index = np.arange(steps, dtype=np.float64)
    halfway = steps // 2
    out = np.empty(steps, dtype=np.float32)
    out[:halfway] = np.float64(start32) + step * index[:halfway]
    out[halfway:] = np.float64(end32) - step * (steps - 1 - index[halfway:])
    return out


def _cosine_betas(num_train_timesteps: int) -> np.ndarray:
    def alpha_bar(t: float) -> float:
        return math.cos((t + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2

    betas = [
        min(1 - alpha_bar((i + 1) / num_train_timesteps) / alpha_bar(i / num_train_timesteps), COSINE_MAX_BETA)
        for i in range(num_train_timesteps)
    ]
    return np.array(betas, dtype=np.float32)


def compute_betas(config: SchedulerConfig) -> np.ndarray:
    """Training betas in float32, with the same rounding as diffusers' torch code."""
    n = config.num_train_timesteps
    if config.trained_betas is not None:
        return np.array(config.trained_betas, dtype=np.float32)
    if config.beta_schedule == "linear":
        return _linspace_float32(config.beta_start, config.beta_end, n)
    if config.beta_schedule == "scaled_linear":
        return _linspace_float32(config.beta_start**0.5, config.beta_end**0.5, n) ** 2
    return _cosine_betas(n)


def compute_alphas_cumprod(config: SchedulerConfig) -> np.ndarray:
    """Cumulative product of (1 - beta) as torch.cumprod gives it: float32 values, with the
    product accumulated in float64 (PyTorch's CPU accumulation type for float)."""
    alphas = np.float32(1.0) - compute_betas(config)
    return np.cumprod(alphas.astype(np.float64)).astype(np.float32)


def spaced_timesteps(config: SchedulerConfig, num_inference_steps: int) -> np.ndarray:
    """Timesteps from high noise to low, per `timestep_spacing` (diffusers' Table 2 choices)."""
    n_train = config.num_train_timesteps
    if config.timestep_spacing == "linspace":
        return np.linspace(0, n_train - 1, num_inference_steps, dtype=np.float32)[::-1].copy()
    if config.timestep_spacing == "leading":
        ratio = n_train // num_inference_steps
        timesteps = (np.arange(0, num_inference_steps) * ratio).round()[::-1].astype(np.float32)
        return timesteps + np.float32(config.steps_offset)
    ratio = n_train / num_inference_steps
    return np.arange(n_train, 0, -ratio).round().astype(np.float32) - np.float32(1)


def sigma_to_timestep(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timesteps of sigmas, interpolating in log-sigma."""
    log_sigma = np.log(np.maximum(sigmas, LOG_SIGMA_FLOOR))
    distances = log_sigma - log_sigmas[:, np.newaxis]
    low = np.cumsum(distances >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high = low + 1
    weight = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[high]), 0, 1)
    return ((1 - weight) * low + weight * high).reshape(sigmas.shape)


class Scheduler(ABC):
    """The interface every sdrt sampler implements (see the module docstring for the loop)."""

    #: Defaults for fields missing from the config: the diffusers class's own defaults.
    config_defaults: ClassVar[dict[str, Any]]
    #: The diffusers class this one reproduces.
    reference_name: ClassVar[str]

    def __init__(self, config: SchedulerConfig):
        self.config = config
        self.num_inference_steps = 0
        self.timesteps = np.zeros(0, dtype=np.float32)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Scheduler":
        """Build from a `scheduler_config.json` dict of any diffusers scheduler class."""
        return cls(SchedulerConfig.from_dict(config, cls.config_defaults))

    @abstractmethod
    def set_timesteps(self, num_inference_steps: int) -> None:
        """Compute every table the loop needs for this many steps, and reset the history."""

    @property
    @abstractmethod
    def init_noise_sigma(self) -> float:
        """Standard deviation of the initial latent noise."""

    @abstractmethod
    def scale_model_input(self, sample: np.ndarray, step_index: int) -> np.ndarray:
        """The UNet input for step `step_index`."""

    @abstractmethod
    def step(
        self, model_output: np.ndarray, step_index: int, sample: np.ndarray, noise: np.ndarray | None = None
    ) -> np.ndarray:
        """The sample after step `step_index`; `noise` is used by stochastic samplers only."""

    @abstractmethod
    def add_noise(self, original: np.ndarray, noise: np.ndarray, step_index: int) -> np.ndarray:
        """`original` noised to the level of step `step_index` (image-to-image's start)."""

    def _check_steps(self, num_inference_steps: int) -> None:
        if not isinstance(num_inference_steps, (int, np.integer)) or num_inference_steps < 1:
            raise ConfigError(f"steps must be a positive integer, got {num_inference_steps!r}")
        if num_inference_steps > self.config.num_train_timesteps:
            raise ConfigError(
                f"steps ({num_inference_steps}) cannot exceed the model's "
                f"{self.config.num_train_timesteps} training timesteps"
            )


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


class LMSDiscreteScheduler(Scheduler):
    """Linear multistep sampler (Karras et al.'s LMS), as `diffusers.LMSDiscreteScheduler`."""

    reference_name = "LMSDiscreteScheduler"
    config_defaults = {
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
    }
    #: How many past derivatives the multistep formula uses (diffusers' `step(order=4)`).
    default_order = 4

    def __init__(self, config: SchedulerConfig, order: int = default_order):
        super().__init__(config)
        if order < 1:
            raise ConfigError(f"LMS order must be >= 1, got {order}")
        self.order = order
        self.alphas_cumprod = compute_alphas_cumprod(config)
        # sigma of each training timestep, float32 like the reference's torch arithmetic.
        self.train_sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** np.float32(0.5)
        self.sigmas = np.zeros(1, dtype=np.float32)
        self.coefficients = np.zeros((0, order))
        self._derivatives: deque[np.ndarray] = deque(maxlen=order)

    def set_timesteps(self, num_inference_steps: int) -> None:
        self._check_steps(num_inference_steps)
        self.num_inference_steps = int(num_inference_steps)
        timesteps = spaced_timesteps(self.config, self.num_inference_steps)
        train_sigmas = self.train_sigmas
        log_sigmas = np.log(train_sigmas)
        sigmas = np.interp(timesteps, np.arange(len(train_sigmas)), train_sigmas)
        if self.config.use_karras_sigmas or self.config.use_exponential_sigmas:
            sigma_min, sigma_max = float(sigmas[-1]), float(sigmas[0])
            if self.config.use_karras_sigmas:
                ramp = np.linspace(0, 1, self.num_inference_steps)
                min_inv, max_inv = sigma_min ** (1 / KARRAS_RHO), sigma_max ** (1 / KARRAS_RHO)
                sigmas = (max_inv + ramp * (min_inv - max_inv)) ** KARRAS_RHO
            else:
                sigmas = np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), self.num_inference_steps))
            timesteps = sigma_to_timestep(sigmas, log_sigmas)
        self.sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        self.timesteps = np.asarray(timesteps, dtype=np.float32)
        self.coefficients = lms_coefficients(self.sigmas, self.order)
        self._derivatives.clear()

    @property
    def init_noise_sigma(self) -> float:
        sigma_max = self.sigmas.max()
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return float(sigma_max)
        return float(np.sqrt(sigma_max**2 + np.float32(1)))

    def scale_model_input(self, sample: np.ndarray, step_index: int) -> np.ndarray:
        sigma = self.sigmas[step_index]
        return sample / ((sigma**2 + 1) ** np.float32(0.5))

    def predict_original(self, model_output: np.ndarray, step_index: int, sample: np.ndarray) -> np.ndarray:
        """The denoised sample x0 implied by the model output at this step."""
        sigma = self.sigmas[step_index]
        prediction = self.config.prediction_type
        if prediction == "epsilon":
            return sample - sigma * model_output
        if prediction == "v_prediction":
            return model_output * (-sigma / (sigma**2 + 1) ** np.float32(0.5)) + sample / (sigma**2 + 1)
        return model_output

    def step(
        self, model_output: np.ndarray, step_index: int, sample: np.ndarray, noise: np.ndarray | None = None
    ) -> np.ndarray:
        if len(self._derivatives) != min(step_index, self.order):
            raise RuntimeError(
                f"LMS step {step_index} called after {len(self._derivatives)} steps of history: "
                "steps must run in order from 0 on one scheduler object"
            )
        sigma = self.sigmas[step_index]
        derivative = (sample - self.predict_original(model_output, step_index, sample)) / sigma
        self._derivatives.append(derivative)
        # Newest derivative first, matching the coefficient columns; summed before it is added
        # to the sample, in the reference's order, so float32 rounding agrees.
        terms = zip(self.coefficients[step_index], reversed(self._derivatives))
        coefficient, past = next(terms)
        update = float(coefficient) * past
        for coefficient, past in terms:
            update = update + float(coefficient) * past
        return sample + update

    def add_noise(self, original: np.ndarray, noise: np.ndarray, step_index: int) -> np.ndarray:
        sigma = self.sigmas[step_index].astype(original.dtype)
        return original + noise * sigma


SCHEDULERS: dict[str, type[Scheduler]] = {"lms": LMSDiscreteScheduler}


def scheduler_from_config(name: str, config: Mapping[str, Any]) -> Scheduler:
    """A scheduler by sdrt name ('lms', ...) configured from a scheduler_config.json dict."""
    try:
        cls = SCHEDULERS[name]
    except KeyError:
        raise ConfigError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}") from None
    return cls.from_config(config)
