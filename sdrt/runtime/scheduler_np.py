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
from sdrt.runtime.rng import TorchGenerator

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


FINAL_SIGMAS_TYPES = ("zero", "sigma_min")
INTERPOLATION_TYPES = ("linear", "log_linear")
SOLVER_TYPES = ("midpoint", "heun", "bh1", "bh2")  # DPM++'s, then UniPC's
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large")
# DDPM's variance floor (diffusers clamps it before the square root or log).
DDPM_MIN_VARIANCE = 1e-20
# alphas_cumprod's last value after zero-terminal-SNR rescaling (diffusers keeps sigma finite).
ZERO_SNR_ALPHA_CUMPROD = 2.0**-24


@dataclass(frozen=True)
class SchedulerConfig:
    """The fields of a diffusers `scheduler_config.json` that sdrt's samplers read.

    Each sampler class lists the keys its diffusers namesake accepts, with that class's own
    defaults; other keys in the file (another scheduler's, such as PNDM's `skip_prk_steps`) are
    ignored and take neutral values, as diffusers' `from_config` does.
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

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], defaults: Mapping[str, Any]) -> "SchedulerConfig":
        values = {}
        for field in fields(cls):
            if field.name in defaults:
                value = config.get(field.name)
                values[field.name] = defaults[field.name] if value is None else value
            else:
                values[field.name] = NEUTRAL_CONFIG[field.name]
        if values["trained_betas"] is not None:
            values["trained_betas"] = tuple(float(b) for b in values["trained_betas"])
        values["disable_corrector"] = tuple(int(step) for step in values["disable_corrector"])
        unsupported = {
            "use_beta_sigmas": (True, "use_beta_sigmas is not supported; use use_karras_sigmas instead"),
            "thresholding": (True, "dynamic thresholding (for pixel-space models) is not supported"),
            "timestep_type": ("continuous", "continuous timesteps are not supported"),
            "use_lu_lambdas": (True, "use_lu_lambdas is not supported"),
            "use_flow_sigmas": (True, "flow-matching sigmas are not supported"),
        }
        for key, (bad, message) in unsupported.items():
            if key in defaults.get("_reads", ()) and config.get(key) == bad:
                raise ConfigError(message)
        algorithm = config.get("algorithm_type")
        if "algorithm_type" in defaults.get("_reads", ()) and algorithm not in (None, "dpmsolver++"):
            raise ConfigError(f"algorithm_type {algorithm!r} is not supported; sdrt implements dpmsolver++")
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
        if self.solver_order not in (1, 2, 3):
            raise ConfigError(f"solver_order {self.solver_order} is not supported; sdrt implements 1 to 3")
        if not self.skip_prk_steps:
            raise ConfigError(
                "PNDM's Runge-Kutta warm-up (skip_prk_steps false) is not supported; set "
                "skip_prk_steps true (as Stable Diffusion's configs do) or use another sampler"
            )


# Values of the fields a sampler does not read (so they change nothing).
NEUTRAL_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
    "trained_betas": None, "prediction_type": "epsilon", "timestep_spacing": "linspace", "steps_offset": 0,
    "use_karras_sigmas": False, "use_exponential_sigmas": False, "rescale_betas_zero_snr": False,
    "final_sigmas_type": "zero", "interpolation_type": "linear", "sigma_min": None, "sigma_max": None,
    "clip_sample": False, "clip_sample_range": 1.0, "set_alpha_to_one": False, "solver_order": 2,
    "solver_type": "midpoint", "lower_order_final": True, "euler_at_final": False, "skip_prk_steps": True,
    "variance_type": "fixed_small", "predict_x0": True, "disable_corrector": (),
}
BETA_DEFAULTS = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
                 "trained_betas": None, "prediction_type": "epsilon", "steps_offset": 0}


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


def _cumprod_float32(values: np.ndarray) -> np.ndarray:
    """torch.cumprod of float32: float32 results, accumulated in float64 (PyTorch's CPU
    accumulation type for float)."""
    return np.cumprod(values.astype(np.float64)).astype(np.float32)


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Betas whose last timestep has zero signal (Lin et al. 2023), in float32 like diffusers."""
    alphas_bar_sqrt = np.sqrt(_cumprod_float32(np.float32(1.0) - betas))
    first, last = alphas_bar_sqrt[0], alphas_bar_sqrt[-1]
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
    alphas_bar = alphas_bar_sqrt**2
    alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return np.float32(1.0) - alphas


def compute_alphas_cumprod(config: SchedulerConfig, zero_snr_floor: bool = True) -> np.ndarray:
    """Cumulative product of (1 - beta). With zero-terminal-SNR rescaling the last value is
    floored (`zero_snr_floor`) as diffusers' sigma-based samplers do, so sigmas stay finite."""
    betas = compute_betas(config)
    if config.rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    alphas_cumprod = _cumprod_float32(np.float32(1.0) - betas)
    if config.rescale_betas_zero_snr and zero_snr_floor:
        alphas_cumprod[-1] = ZERO_SNR_ALPHA_CUMPROD
    return alphas_cumprod


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


def integer_timesteps(config: SchedulerConfig, num_inference_steps: int) -> np.ndarray:
    """Integer timesteps, high to low, as DDIM and DDPM space them."""
    n, n_train = num_inference_steps, config.num_train_timesteps
    if config.timestep_spacing == "linspace":
        return np.linspace(0, n_train - 1, n).round()[::-1].astype(np.int64)
    if config.timestep_spacing == "leading":
        return (np.arange(0, n) * (n_train // n)).round()[::-1].astype(np.int64) + config.steps_offset
    return np.round(np.arange(n_train, 0, -n_train / n)).astype(np.int64) - 1


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

    #: Defaults for the config keys the diffusers class reads (and only those), under "_reads"
    #: the further keys it accepts whose unsupported values sdrt refuses.
    config_defaults: ClassVar[dict[str, Any]]
    #: The diffusers class this one reproduces, and the config it needs beyond the model's.
    reference_name: ClassVar[str]
    reference_overrides: ClassVar[dict[str, Any]] = {}
    #: UNet calls per requested step (diffusers' `order`): image-to-image starts at
    #: calls_per_step * the first step it keeps.
    calls_per_step: ClassVar[int] = 1
    #: Whether step() draws noise from the generator (so a batch's noise depends on its size).
    stochastic: ClassVar[bool] = False

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
    def step(self, model_output: np.ndarray, step_index: int, sample: np.ndarray,
             generator: TorchGenerator | None = None) -> np.ndarray:
        """The sample after step `step_index`. Stochastic samplers draw their noise from
        `generator` (the one that drew the initial latents, as in diffusers)."""

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

    @staticmethod
    def _need_generator(generator: TorchGenerator | None, name: str) -> TorchGenerator:
        if generator is None:
            raise ValueError(f"{name} is stochastic: step() needs the generator")
        return generator


class SigmaScheduler(Scheduler):
    """Samplers that work on sigma = sqrt((1 - alpha_bar) / alpha_bar), k-diffusion style:
    the model input is scaled by 1 / sqrt(sigma^2 + 1) and noise is added as x + sigma * n."""

    #: Whether the diffusers class honours use_karras_sigmas / use_exponential_sigmas.
    supports_sigma_schedules: ClassVar[bool] = True

    def __init__(self, config: SchedulerConfig):
        super().__init__(config)
        self.alphas_cumprod = compute_alphas_cumprod(config)
        # sigma of each training timestep, float32 like the reference's torch arithmetic.
        self.train_sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** np.float32(0.5)
        self.sigmas = np.zeros(1, dtype=np.float32)

    def _compute_sigmas(self, num_inference_steps: int) -> None:
        """`timesteps` (float32) and `sigmas` (float32, one more: the final level)."""
        config = self.config
        timesteps = spaced_timesteps(config, num_inference_steps)
        train_sigmas = self.train_sigmas
        log_sigmas = np.log(train_sigmas)
        if config.interpolation_type == "log_linear":
            sigmas = np.exp(_linspace_float32(float(np.log(train_sigmas[-1])), float(np.log(train_sigmas[0])),
                                              num_inference_steps + 1)).astype(np.float32)
        else:
            sigmas = np.interp(timesteps, np.arange(len(train_sigmas)), train_sigmas)
        if self.supports_sigma_schedules:
            sigma_min = config.sigma_min if config.sigma_min is not None else float(sigmas[-1])
            sigma_max = config.sigma_max if config.sigma_max is not None else float(sigmas[0])
            converted = converted_sigmas(config, sigma_min, sigma_max, num_inference_steps)
            if converted is not None:
                sigmas, timesteps = converted, sigma_to_timestep(converted, log_sigmas)
        final = 0.0
        if config.final_sigmas_type == "sigma_min":
            final = float(((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** np.float32(0.5))
        self.sigmas = np.concatenate([sigmas, [final]]).astype(np.float32)
        self.timesteps = np.asarray(timesteps, dtype=np.float32)

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

    def add_noise(self, original: np.ndarray, noise: np.ndarray, step_index: int) -> np.ndarray:
        sigma = self.sigmas[step_index].astype(original.dtype)
        return original + noise * sigma


def karras_sigmas(sigma_min: float, sigma_max: float, num_inference_steps: int) -> np.ndarray:
    """Karras et al. (2022): noise levels evenly spaced in sigma^(1/rho)."""
    ramp = np.linspace(0, 1, num_inference_steps)
    min_inv, max_inv = sigma_min ** (1 / KARRAS_RHO), sigma_max ** (1 / KARRAS_RHO)
    return (max_inv + ramp * (min_inv - max_inv)) ** KARRAS_RHO


def converted_sigmas(config: SchedulerConfig, sigma_min: float, sigma_max: float, num_inference_steps: int):
    """The config's alternative noise levels between sigma_max and sigma_min (Karras or
    exponential spacing), or None when the config asks for neither."""
    if config.use_karras_sigmas:
        return karras_sigmas(sigma_min, sigma_max, num_inference_steps)
    if config.use_exponential_sigmas:
        return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), num_inference_steps))
    return None


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
    """Linear multistep sampler (Karras et al.'s LMS), as `diffusers.LMSDiscreteScheduler`."""

    reference_name = "LMSDiscreteScheduler"
    config_defaults = {**BETA_DEFAULTS, "timestep_spacing": "linspace", "use_karras_sigmas": False,
                       "use_exponential_sigmas": False, "_reads": ("use_beta_sigmas",)}
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

    def set_timesteps(self, num_inference_steps: int) -> None:
        self._check_steps(num_inference_steps)
        self.num_inference_steps = int(num_inference_steps)
        self._compute_sigmas(self.num_inference_steps)
        self.coefficients = lms_coefficients(self.sigmas, self.order)
        self._derivatives.clear()
        self._last_index = None

    def step(self, model_output: np.ndarray, step_index: int, sample: np.ndarray,
             generator: TorchGenerator | None = None) -> np.ndarray:
        if self._last_index is not None and step_index != self._last_index + 1:
            raise RuntimeError(
                f"LMS step {step_index} called after step {self._last_index}: "
                "steps must run in order on one scheduler object"
            )
        self._last_index = step_index
        sigma = self.sigmas[step_index]
        derivative = (sample - self.predict_original(model_output, step_index, sample)) / sigma
        self._derivatives.append(derivative)
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


class EulerDiscreteScheduler(SigmaScheduler):
    """Euler's method on the probability-flow ODE (Karras et al. Algorithm 2 without churn),
    as `diffusers.EulerDiscreteScheduler` with its default step arguments."""

    reference_name = "EulerDiscreteScheduler"
    config_defaults = {**BETA_DEFAULTS, "timestep_spacing": "linspace", "use_karras_sigmas": False,
                       "use_exponential_sigmas": False, "rescale_betas_zero_snr": False,
                       "final_sigmas_type": "zero", "interpolation_type": "linear", "sigma_min": None,
                       "sigma_max": None, "_reads": ("use_beta_sigmas", "timestep_type")}

    def set_timesteps(self, num_inference_steps: int) -> None:
        self._check_steps(num_inference_steps)
        self.num_inference_steps = int(num_inference_steps)
        self._compute_sigmas(self.num_inference_steps)

    def step(self, model_output: np.ndarray, step_index: int, sample: np.ndarray,
             generator: TorchGenerator | None = None) -> np.ndarray:
        sigma = self.sigmas[step_index]
        derivative = (sample - self.predict_original(model_output, step_index, sample)) / sigma
        return sample + derivative * (self.sigmas[step_index + 1] - sigma)


class EulerAncestralDiscreteScheduler(SigmaScheduler):
    """Euler ancestral: an Euler step down to sigma_down, then fresh noise up to the next
    level, as `diffusers.EulerAncestralDiscreteScheduler` (noise from the pipeline's generator)."""

    reference_name = "EulerAncestralDiscreteScheduler"
    stochastic = True
    supports_sigma_schedules = False
    config_defaults = {**BETA_DEFAULTS, "timestep_spacing": "linspace", "rescale_betas_zero_snr": False}

    def set_timesteps(self, num_inference_steps: int) -> None:
        self._check_steps(num_inference_steps)
        self.num_inference_steps = int(num_inference_steps)
        self._compute_sigmas(self.num_inference_steps)
        sigma_from, sigma_to = self.sigmas[:-1], self.sigmas[1:]
        self.sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** np.float32(0.5)
        self.sigma_down = (sigma_to**2 - self.sigma_up**2) ** np.float32(0.5)

    def step(self, model_output: np.ndarray, step_index: int, sample: np.ndarray,
             generator: TorchGenerator | None = None) -> np.ndarray:
        generator = self._need_generator(generator, "euler_a")
        sigma = self.sigmas[step_index]
        derivative = (sample - self.predict_original(model_output, step_index, sample)) / sigma
        prev_sample = sample + derivative * (self.sigma_down[step_index] - sigma)
        return prev_sample + generator.randn(model_output.shape) * self.sigma_up[step_index]


class HeunDiscreteScheduler(SigmaScheduler):
    """Heun's second-order method (Karras et al. Algorithm 1 without churn), as
    `diffusers.HeunDiscreteScheduler`: every step but the last makes two UNet calls, an Euler
    predictor and a trapezoidal corrector, so n steps take 2n - 1 calls."""

    reference_name = "HeunDiscreteScheduler"
    calls_per_step = 2
    config_defaults = {**BETA_DEFAULTS, "beta_start": 0.00085, "beta_end": 0.012, "timestep_spacing": "linspace",
                       "use_karras_sigmas": False, "use_exponential_sigmas": False, "clip_sample": False,
                       "clip_sample_range": 1.0, "_reads": ("use_beta_sigmas",)}

    def __init__(self, config: SchedulerConfig):
        super().__init__(config)
        self._first: tuple[np.ndarray, np.float32, np.ndarray] | None = None

    def set_timesteps(self, num_inference_steps: int) -> None:
        self._check_steps(num_inference_steps)
        self.num_inference_steps = int(num_inference_steps)
        self._compute_sigmas(self.num_inference_steps)
        sigmas, timesteps = self.sigmas, self.timesteps
        self.sigmas = np.concatenate([sigmas[:1], np.repeat(sigmas[1:-1], 2), sigmas[-1:]])
        self.timesteps = np.concatenate([timesteps[:1], np.repeat(timesteps[1:], 2)])
        self._first = None

    def step(self, model_output: np.ndarray, step_index: int, sample: np.ndarray,
             generator: TorchGenerator | None = None) -> np.ndarray:
        first_order = self._first is None
        if first_order:
            sigma, sigma_next = self.sigmas[step_index], self.sigmas[step_index + 1]
            sigma_input = sigma
        else:
            sigma, sigma_next = self.sigmas[step_index - 1], self.sigmas[step_index]
            sigma_input = sigma_next
        prediction = self.config.prediction_type
        if prediction == "epsilon":
            original = sample - sigma_input * model_output
        elif prediction == "v_prediction":
            original = model_output * (-sigma_input / (sigma_input**2 + 1) ** np.float32(0.5)) + (
                sample / (sigma_input**2 + 1))
        else:
            original = model_output
        if self.config.clip_sample:
            limit = self.config.clip_sample_range
            original = np.clip(original, -limit, limit)
        if first_order:
            derivative = (sample - original) / sigma
            dt = sigma_next - sigma
            self._first = (derivative, dt, sample)
        else:
            # Corrector: average the predictor's slope with the slope at the predicted point,
            # and step again from the predictor's starting sample.
            previous_derivative, dt, sample_before = self._first
            derivative = (previous_derivative + (sample - original) / sigma_next) / 2
            sample = sample_before
            self._first = None
        return sample + derivative * dt


class _AlphaTableScheduler(Scheduler):
    """Samplers stepping on alpha_bar(t) directly (DDIM, PNDM, DDPM): unscaled input, unit noise."""

    def __init__(self, config: SchedulerConfig):
        super().__init__(config)
        self.alphas_cumprod = compute_alphas_cumprod(config, zero_snr_floor=False)

    @property
    def init_noise_sigma(self) -> float:
        return 1.0

    def scale_model_input(self, sample: np.ndarray, step_index: int) -> np.ndarray:
        return sample

    def add_noise(self, original: np.ndarray, noise: np.ndarray, step_index: int) -> np.ndarray:
        alpha_prod = self.alphas_cumprod[int(self.timesteps[step_index])]
        half = np.float32(0.5)
        return alpha_prod**half * original + (1 - alpha_prod) ** half * noise

    def _predict_original(self, model_output: np.ndarray, sample: np.ndarray, alpha_prod, beta_prod) -> np.ndarray:
        """x0 implied by the model output at alpha_bar = alpha_prod, clipped if configured."""
        half = np.float32(0.5)
        prediction = self.config.prediction_type
        if prediction == "epsilon":
            original = (sample - beta_prod**half * model_output) / alpha_prod**half
        elif prediction == "v_prediction":
            original = alpha_prod**half * sample - beta_prod**half * model_output
        else:
            original = model_output
        if self.config.clip_sample:
            limit = self.config.clip_sample_range
            original = np.clip(original, -limit, limit)
        return original


class DDIMScheduler(_AlphaTableScheduler):
    """Denoising diffusion implicit models with eta = 0 (deterministic), as
    `diffusers.DDIMScheduler` called the way StableDiffusionPipeline calls it."""

    reference_name = "DDIMScheduler"
    config_defaults = {**BETA_DEFAULTS, "timestep_spacing": "leading", "clip_sample": True,
                       "clip_sample_range": 1.0, "set_alpha_to_one": True, "rescale_betas_zero_snr": False,
                       "_reads": ("thresholding",)}

    def __init__(self, config: SchedulerConfig):
        super().__init__(config)
        self.final_alpha_cumprod = np.float32(1.0) if config.set_alpha_to_one else self.alphas_cumprod[0]

    def set_timesteps(self, num_inference_steps: int) -> None:
        self._check_steps(num_inference_steps)
        n, n_train = int(num_inference_steps), self.config.num_train_timesteps
        self.num_inference_steps = n
        timesteps = integer_timesteps(self.config, n)
        self.timesteps = timesteps.copy()
        # diffusers steps back by n_train // n whatever the spacing.
        previous = timesteps - n_train // n
        self.alpha_prod = self.alphas_cumprod[timesteps]
        self.alpha_prod_prev = np.where(previous >= 0, self.alphas_cumprod[np.maximum(previous, 0)],
                                        self.final_alpha_cumprod).astype(np.float32)

    def step(self, model_output: np.ndarray, step_index: int, sample: np.ndarray,
             generator: TorchGenerator | None = None) -> np.ndarray:
        alpha_prod_t = self.alpha_prod[step_index]
        alpha_prod_prev = self.alpha_prod_prev[step_index]
        beta_prod_t = 1 - alpha_prod_t
        half = np.float32(0.5)
        pred_original = self._predict_original(model_output, sample, alpha_prod_t, beta_prod_t)
        # The noise estimate comes from the unclipped prediction, as in diffusers.
        prediction = self.config.prediction_type
        if prediction == "epsilon":
            pred_epsilon = model_output
        elif prediction == "sample":
            pred_epsilon = (sample - alpha_prod_t**half * model_output) / beta_prod_t**half
        else:
            pred_epsilon = alpha_prod_t**half * model_output + beta_prod_t**half * sample
        direction = (1 - alpha_prod_prev) ** half * pred_epsilon  # eta = 0: no variance term
        return alpha_prod_prev**half * pred_original + direction



def multistep_schedule(config: SchedulerConfig, alphas_cumprod: np.ndarray, n: int, *, karras_rounds: bool,
                       final_from_schedule: bool) -> tuple[np.ndarray, np.ndarray]:
    """(sigmas with the final level appended, int64 timesteps) of the multistep solvers (DPM++,
    UniPC), which span the whole training range. They differ in two details: whether Karras
    timesteps are rounded, and whether a sigma_min final level repeats the converted
    schedule's last sigma (UniPC) or is the training sigma_min (DPM++)."""
    n_train = config.num_train_timesteps
    if config.timestep_spacing == "linspace":
        timesteps = np.linspace(0, n_train - 1, n + 1).round()[::-1][:-1].astype(np.int64)
    elif config.timestep_spacing == "leading":
        ratio = n_train // (n + 1)
        timesteps = (np.arange(0, n + 1) * ratio).round()[::-1][:-1].astype(np.int64) + config.steps_offset
    else:
        timesteps = np.arange(n_train, 0, -n_train / n).round().astype(np.int64) - 1
    train_sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** np.float32(0.5)
    sigmas = converted_sigmas(config, float(train_sigmas[0]), float(train_sigmas[-1]), n)
    final = 0.0
    if config.final_sigmas_type == "sigma_min":
        final = float(train_sigmas[0])
    if sigmas is not None:
        timesteps = sigma_to_timestep(sigmas, np.log(train_sigmas))
        if config.use_karras_sigmas and karras_rounds:
            timesteps = timesteps.round()
        if config.final_sigmas_type == "sigma_min" and final_from_schedule:
            final = float(sigmas[-1])
    else:
        sigmas = np.interp(timesteps, np.arange(len(train_sigmas)), train_sigmas)
    return np.concatenate([sigmas, [final]]).astype(np.float32), timesteps.astype(np.int64)


class _MultistepScheduler(Scheduler):
    """What DPM++ and UniPC share: the schedule (multistep_schedule), the VP tables alpha_t =
    1 / sqrt(sigma^2 + 1), sigma_t = sigma * alpha_t and lambda = log(alpha_t / sigma_t), and
    the data (x0) prediction their updates work on. Subclasses say how Karras timesteps round
    and where a sigma_min final level comes from, then plan their own coefficients."""

    #: Whether Karras timesteps are rounded, and whether a sigma_min final level repeats the
    #: converted schedule's last sigma (see multistep_schedule).
    karras_rounds: bool = True
    final_from_schedule: bool = False

    def __init__(self, config: SchedulerConfig):
        super().__init__(config)
        self.alphas_cumprod = compute_alphas_cumprod(config)

    @property
    def init_noise_sigma(self) -> float:
        return 1.0

    def set_timesteps(self, num_inference_steps: int) -> None:
        self._check_steps(num_inference_steps)
        self.sigmas, self.timesteps = multistep_schedule(self.config, self.alphas_cumprod, int(num_inference_steps),
                                                         karras_rounds=self.karras_rounds,
                                                         final_from_schedule=self.final_from_schedule)
        self.num_inference_steps = len(self.timesteps)
        one, half = np.float32(1.0), np.float32(0.5)
        self.alpha_t = one / (self.sigmas**2 + one) ** half
        self.sigma_t = self.sigmas * self.alpha_t
        with np.errstate(divide="ignore"):  # the final sigma 0 gives lambda = +inf
            self.lambdas = np.log(self.alpha_t) - np.log(self.sigma_t)
        self._plan()

    @abstractmethod
    def _plan(self) -> None:
        """Compute the sampler's coefficients from the tables and reset its history."""

    def scale_model_input(self, sample: np.ndarray, step_index: int) -> np.ndarray:
        return sample

    def _data_prediction(self, model_output: np.ndarray, step_index: int, sample: np.ndarray) -> np.ndarray:
        alpha_t, sigma_t = self.alpha_t[step_index], self.sigma_t[step_index]
        prediction = self.config.prediction_type
        if prediction == "epsilon":
            return (sample - sigma_t * model_output) / alpha_t
        if prediction == "v_prediction":
            return alpha_t * sample - sigma_t * model_output
        return model_output

    def add_noise(self, original: np.ndarray, noise: np.ndarray, step_index: int) -> np.ndarray:
        return self.alpha_t[step_index] * original + self.sigma_t[step_index] * noise


class DPMSolverMultistepScheduler(_MultistepScheduler):
    """DPM-Solver++ (2M by default: second order, multistep), as
    `diffusers.DPMSolverMultistepScheduler` with algorithm_type "dpmsolver++". Each step's
    float32 coefficients are computed once in set_timesteps."""

    reference_name = "DPMSolverMultistepScheduler"
    config_defaults = {**BETA_DEFAULTS, "timestep_spacing": "linspace", "use_karras_sigmas": False,
                       "use_exponential_sigmas": False, "rescale_betas_zero_snr": False,
                       "final_sigmas_type": "zero", "solver_order": 2, "solver_type": "midpoint",
                       "lower_order_final": True, "euler_at_final": False,
                       "_reads": ("use_beta_sigmas", "thresholding", "algorithm_type", "use_lu_lambdas")}
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

    def _plan(self) -> None:
        """Per step: its order and the float32 coefficients of x_t = a*x + b*D0 + c*D1."""
        one, half = np.float32(1.0), np.float32(0.5)
        alpha, sigma, lambdas = self.alpha_t, self.sigma_t, self.lambdas
        self._previous_x0 = None
        count, config = self.num_inference_steps, self.config
        self.orders = np.ones(count, dtype=np.int64)
        self.coefficients = np.zeros((count, 3), dtype=np.float32)
        for i in range(count):
            last = i == count - 1
            lower_final = last and (config.euler_at_final or config.final_sigmas_type == "zero" or
                                    (config.lower_order_final and count < self.LOWER_ORDER_FINAL_BELOW))
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

    def step(self, model_output: np.ndarray, step_index: int, sample: np.ndarray,
             generator: TorchGenerator | None = None) -> np.ndarray:
        x0 = self._data_prediction(model_output, step_index, sample)
        ratio, weight, second = self.coefficients[step_index]
        # The first step of a run is first order, also when it starts mid-schedule (img2img).
        if self.orders[step_index] == 2 and self._previous_x0 is not None:
            # diffusers: ratio*x - (alpha*(e^-h - 1))*D0 - 0.5*(alpha*(e^-h - 1))*D1, D1 = (m0 - m1)/r0
            prev_sample = ratio * sample + weight * x0 + second * (x0 - self._previous_x0)
        else:
            prev_sample = ratio * sample + weight * x0
        self._previous_x0 = x0
        return prev_sample

class UniPCMultistepScheduler(_MultistepScheduler):
    """UniPC (a unified predictor-corrector on the data prediction, B(h) variants), as
    `diffusers.UniPCMultistepScheduler`: each step first corrects the sample the previous step
    predicted, using the new model output (UniC), then predicts the next sample from the stored
    data predictions (UniP). Noise levels and timesteps follow DPM++'s spacing rules; every
    step's coefficients are computed once per (step, order)."""

    reference_name = "UniPCMultistepScheduler"
    config_defaults = {**BETA_DEFAULTS, "timestep_spacing": "linspace", "use_karras_sigmas": False,
                       "use_exponential_sigmas": False, "rescale_betas_zero_snr": False,
                       "final_sigmas_type": "zero", "solver_order": 2, "solver_type": "bh2",
                       "lower_order_final": True, "predict_x0": True, "disable_corrector": (),
                       "_reads": ("use_beta_sigmas", "thresholding", "use_flow_sigmas")}
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
        self._plan()

    def _plan(self) -> None:
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
            rhos = (np.array([0.5]) if order == 1 else np.linalg.solve(matrix, np.array(b, np.float64)))
        elif order == 1:
            rhos = np.zeros(0)
        elif order == 2:
            rhos = np.array([0.5])
        else:
            rhos = np.linalg.solve(matrix[:-1, :-1], np.array(b[:-1], np.float64))
        result = (np.float32(ratio), np.float32(m0_weight), np.float32(b_weight), rhos.astype(np.float32), rks)
        self._coefficients[key] = result
        return result

    def step(self, model_output: np.ndarray, step_index: int, sample: np.ndarray,
             generator: TorchGenerator | None = None) -> np.ndarray:
        x0 = self._data_prediction(model_output, step_index, sample)
        if self._last_sample is not None:  # UniC: correct this step's sample with the new output
            order = self._last_order
            ratio, m0_weight, b_weight, rhos, rks = self._update(step_index - 1, step_index, order, corrector=True)
            m0 = self._x0s[-1]
            correction = rhos[-1] * (x0 - m0)
            for k, rk in enumerate(rks, start=1):
                correction = correction + rhos[k - 1] * ((self._x0s[-(k + 1)] - m0) / rk)
            sample = ratio * self._last_sample + m0_weight * m0 + b_weight * correction
        self._x0s = (self._x0s + [x0])[-self.config.solver_order:]
        order = self.config.solver_order
        if self.config.lower_order_final:
            order = min(order, self.num_inference_steps - step_index)
        order = min(order, len(self._x0s))  # warm-up: as many predictions as this run has made
        ratio, m0_weight, b_weight, rhos, rks = self._update(step_index, step_index + 1, order, corrector=False)
        prev_sample = ratio * sample + m0_weight * x0
        if rks:
            prediction = sum(rho * ((self._x0s[-(k + 1)] - x0) / rk)
                             for k, (rho, rk) in enumerate(zip(rhos, rks), start=1))
            prev_sample = prev_sample + b_weight * prediction
        self._last_sample, self._last_order = sample, order
        return prev_sample

class PNDMScheduler(_AlphaTableScheduler):
    """Pseudo numerical methods (PLMS: linear multistep on the model output), as
    `diffusers.PNDMScheduler` with skip_prk_steps, the setting of Stable Diffusion's configs.
    n steps make n + 1 UNet calls: the second step re-evaluates the first's target."""

    reference_name = "PNDMScheduler"
    config_defaults = {**BETA_DEFAULTS, "timestep_spacing": "leading", "set_alpha_to_one": False,
                       "skip_prk_steps": False}

    def __init__(self, config: SchedulerConfig):
        super().__init__(config)
        self.final_alpha_cumprod = np.float32(1.0) if config.set_alpha_to_one else self.alphas_cumprod[0]
        self._ets: list[np.ndarray] = []
        self._counter = 0
        self._held_sample: np.ndarray | None = None

    def set_timesteps(self, num_inference_steps: int) -> None:
        self._check_steps(num_inference_steps)
        n = int(num_inference_steps)
        self.num_inference_steps = n
        n_train, spacing = self.config.num_train_timesteps, self.config.timestep_spacing
        # PNDM keeps its timesteps ascending before reversing them (unlike DDIM for trailing).
        if spacing == "linspace":
            ascending = np.linspace(0, n_train - 1, n).round().astype(np.int64)
        elif spacing == "leading":
            ascending = (np.arange(0, n) * (n_train // n)).round().astype(np.int64) + self.config.steps_offset
        else:
            ascending = np.round(np.arange(n_train, 0, -n_train / n))[::-1].astype(np.int64) - 1
        self.timesteps = np.concatenate([ascending[:-1], ascending[-2:-1], ascending[-1:]])[::-1].copy()
        self._ets, self._counter, self._held_sample = [], 0, None

    def _alpha(self, timestep: int) -> np.float32:
        return self.alphas_cumprod[timestep] if timestep >= 0 else self.final_alpha_cumprod

    def step(self, model_output: np.ndarray, step_index: int, sample: np.ndarray,
             generator: TorchGenerator | None = None) -> np.ndarray:
        ratio = self.config.num_train_timesteps // self.num_inference_steps
        timestep = int(self.timesteps[step_index])
        prev_timestep = timestep - ratio
        if self._counter != 1:
            self._ets = self._ets[-3:] + [model_output]
        else:
            prev_timestep, timestep = timestep, timestep + ratio
        ets = self._ets
        if len(ets) == 1 and self._counter == 0:
            self._held_sample = sample
        elif len(ets) == 1 and self._counter == 1:
            model_output = (model_output + ets[-1]) / 2
            sample, self._held_sample = self._held_sample, None
        elif len(ets) == 2:
            model_output = (3 * ets[-1] - ets[-2]) / 2
        elif len(ets) == 3:
            model_output = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
        else:
            model_output = (1 / 24) * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])
        self._counter += 1
        alpha_t, alpha_prev = self._alpha(timestep), self._alpha(prev_timestep)
        beta_t, beta_prev = 1 - alpha_t, 1 - alpha_prev
        half = np.float32(0.5)
        if self.config.prediction_type == "v_prediction":
            model_output = alpha_t**half * model_output + beta_t**half * sample
        elif self.config.prediction_type != "epsilon":
            raise ConfigError("PNDM supports the epsilon and v_prediction prediction types")
        sample_coefficient = (alpha_prev / alpha_t) ** half
        denominator = alpha_t * beta_prev**half + (alpha_t * beta_t * alpha_prev) ** half
        return sample_coefficient * sample - (alpha_prev - alpha_t) * model_output / denominator


class DDPMScheduler(_AlphaTableScheduler):
    """Denoising diffusion probabilistic models (ancestral sampling with the posterior's
    variance), as `diffusers.DDPMScheduler`; the noise comes from the pipeline's generator."""

    reference_name = "DDPMScheduler"
    stochastic = True
    config_defaults = {**BETA_DEFAULTS, "timestep_spacing": "leading", "clip_sample": True,
                       "clip_sample_range": 1.0, "variance_type": "fixed_small",
                       "rescale_betas_zero_snr": False, "_reads": ("thresholding",)}

    def set_timesteps(self, num_inference_steps: int) -> None:
        self._check_steps(num_inference_steps)
        self.num_inference_steps = int(num_inference_steps)
        timesteps = integer_timesteps(self.config, self.num_inference_steps)
        self.timesteps = timesteps.copy()
        previous = np.append(timesteps[1:], -1)
        one = np.float32(1.0)
        alpha = self.alphas_cumprod[timesteps]
        alpha_prev = np.where(previous >= 0, self.alphas_cumprod[np.maximum(previous, 0)], one).astype(np.float32)
        beta, beta_prev = one - alpha, one - alpha_prev
        current_alpha = alpha / alpha_prev
        current_beta = one - current_alpha
        half = np.float32(0.5)
        self.alpha_prod, self.beta_prod = alpha, beta
        self.original_coefficient = (alpha_prev**half * current_beta) / beta
        self.sample_coefficient = current_alpha**half * beta_prev / beta
        variance = np.maximum((one - alpha_prev) / (one - alpha) * current_beta, np.float32(DDPM_MIN_VARIANCE))
        if self.config.variance_type == "fixed_small":
            self.noise_scale = variance**half
        elif self.config.variance_type == "fixed_small_log":
            self.noise_scale = np.exp(half * np.log(variance))
        else:
            self.noise_scale = current_beta**half

    def step(self, model_output: np.ndarray, step_index: int, sample: np.ndarray,
             generator: TorchGenerator | None = None) -> np.ndarray:
        original = self._predict_original(model_output, sample, self.alpha_prod[step_index],
                                          self.beta_prod[step_index])
        prev_sample = self.original_coefficient[step_index] * original + self.sample_coefficient[step_index] * sample
        if self.timesteps[step_index] > 0:
            noise = self._need_generator(generator, "ddpm").randn(model_output.shape)
            prev_sample = prev_sample + self.noise_scale[step_index] * noise
        return prev_sample


def _karras(cls: type[Scheduler]) -> type[Scheduler]:
    """The same sampler with Karras sigmas forced on, as UIs name e.g. "DPM++ 2M Karras"."""

    class Karras(cls):  # type: ignore[valid-type, misc]
        @classmethod
        def from_config(cls_, config: Mapping[str, Any]) -> Scheduler:
            return super().from_config({**dict(config), "use_karras_sigmas": True, "use_exponential_sigmas": False})

    Karras.__name__ = Karras.__qualname__ = f"{cls.__name__}Karras"
    Karras.reference_overrides = {"use_karras_sigmas": True}
    return Karras


SCHEDULERS: dict[str, type[Scheduler]] = {
    "lms": LMSDiscreteScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "ddim": DDIMScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,
    "dpmpp_2m_karras": _karras(DPMSolverMultistepScheduler),
    "pndm": PNDMScheduler,
    "ddpm": DDPMScheduler,
    "heun": HeunDiscreteScheduler,
    "unipc": UniPCMultistepScheduler,
}


def scheduler_from_config(name: str, config: Mapping[str, Any]) -> Scheduler:
    """A scheduler by sdrt name ('lms', 'euler', ...) configured from a scheduler_config.json dict."""
    try:
        cls = SCHEDULERS[name]
    except KeyError:
        raise ConfigError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}") from None
    return cls.from_config(config)
