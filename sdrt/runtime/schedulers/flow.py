"""Flow-matching Euler (SD3, FLUX), as `diffusers.FlowMatchEulerDiscreteScheduler` on its
deterministic path: sigmas evenly spaced in time, shifted by `shift` or, with
use_dynamic_shifting, by the caller's `mu` (the pipelines compute it from the image's sequence
length: `dynamic_shift_mu`), optionally stretched to end at `shift_terminal`; each step is
x + (sigma_next - sigma) * velocity.

diffusers shifts the training sigmas once when the scheduler is built (sigma_max and sigma_min
come from them) and the inference sigmas again in set_timesteps; sdrt does the same, with the
same float32 / float64 rounding at each stage, so the tables agree bit for bit.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sdrt.errors import ConfigError
from sdrt.runtime.rng import TorchGenerator
from sdrt.runtime.schedulers.base import Scheduler
from sdrt.runtime.schedulers.config import NEUTRAL_CONFIG, SchedulerConfig
from sdrt.runtime.schedulers.spaces import FLOW, FLOW_PREDICTION

#: The config keys of diffusers' class that sdrt reads, with its defaults. The class has no
#: prediction_type (its model predicts velocity); sdrt reads it so that a diffusion model's
#: scheduler file, which names epsilon or v_prediction, is refused (Scheduler.from_config).
#: The keys diffusers' class reads; their defaults are the neutral values config.py keeps for every sampler.
FLOW_KEYS = (
    "num_train_timesteps",
    "shift",
    "use_dynamic_shifting",
    "base_shift",
    "max_shift",
    "base_image_seq_len",
    "max_image_seq_len",
    "time_shift_type",
    "shift_terminal",
)
FLOW_DEFAULTS: dict[str, Any] = {
    **{key: NEUTRAL_CONFIG[key] for key in FLOW_KEYS},
    "prediction_type": FLOW_PREDICTION,
}
#: The class's further options sdrt does not implement: key -> (refused value, message).
FLOW_UNSUPPORTED: dict[str, tuple[Any, str]] = {
    "invert_sigmas": (True, "invert_sigmas (Mochi's inverted schedule) is not supported by flow_euler"),
    "use_karras_sigmas": (True, "use_karras_sigmas is not supported by flow_euler"),
    "use_exponential_sigmas": (True, "use_exponential_sigmas is not supported by flow_euler"),
    "use_beta_sigmas": (True, "use_beta_sigmas is not supported by flow_euler"),
    "stochastic_sampling": (
        True,
        "stochastic_sampling is not supported; flow_euler is the deterministic Euler sampler",
    ),
}
#: The exponent diffusers' set_timesteps passes to its time shift (`time_shift(mu, 1.0, sigmas)`).
TIME_SHIFT_EXPONENT = 1.0


def shift_sigmas(sigmas: np.ndarray, shift) -> np.ndarray:
    """SD3's fixed shift, shift * s / (1 + (shift - 1) * s), in the dtype of `sigmas` (a Python
    `shift` rounds to it, shift - 1 before rounding, as torch does with its scalars)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def time_shift(kind: str, mu: float, sigmas: np.ndarray) -> np.ndarray:
    """The resolution-dependent shift by mu (float64, as diffusers' NumPy stage computes it)."""
    if kind == "exponential":
        return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1) ** TIME_SHIFT_EXPONENT)
    return mu / (mu + (1 / sigmas - 1) ** TIME_SHIFT_EXPONENT)


def stretch_to_terminal(sigmas: np.ndarray, terminal: float) -> np.ndarray:
    """Sigmas scaled (in 1 - sigma) so that the last one is `terminal` (LTX-Video's schedule)."""
    one_minus = 1 - sigmas
    if one_minus[-1] == 0:
        raise ConfigError("shift_terminal cannot stretch a schedule that ends at sigma 1 (one step); use more steps")
    scale = one_minus[-1] / (1 - terminal)
    return 1 - (one_minus / scale)


def dynamic_shift_mu(config: SchedulerConfig, image_seq_len: int) -> float:
    """The mu diffusers' SD3 and FLUX pipelines pass for an image of `image_seq_len` latent
    tokens: linear from base_shift at base_image_seq_len to max_shift at max_image_seq_len."""
    slope = (config.max_shift - config.base_shift) / (config.max_image_seq_len - config.base_image_seq_len)
    intercept = config.base_shift - slope * config.base_image_seq_len
    return image_seq_len * slope + intercept


def checked_mu(config: SchedulerConfig, mu) -> float | None:
    """`mu` for set_timesteps: required with use_dynamic_shifting, refused without (diffusers
    would ignore it), a finite number the time shift can take."""
    dynamic = config.use_dynamic_shifting
    if mu is None:
        if dynamic:
            raise ConfigError(
                "this flow-matching scheduler shifts its sigmas by the image size "
                "(use_dynamic_shifting): set_timesteps needs mu (dynamic_shift_mu)"
            )
        return None
    if not dynamic:
        raise ConfigError("mu is for schedulers with use_dynamic_shifting; this one has a fixed shift")
    if isinstance(mu, bool) or not isinstance(mu, (int, float, np.floating)) or not math.isfinite(mu):
        raise ConfigError(f"mu must be a finite number, got {mu!r}")
    if config.time_shift_type == "linear" and not mu > 0:
        raise ConfigError(f"a linear time shift needs a positive mu, got {mu!r}")
    try:
        math.exp(mu)
    except OverflowError:
        raise ConfigError(f"mu {mu!r} is too large for an exponential time shift") from None
    return float(mu)


class FlowMatchEulerDiscreteScheduler(Scheduler):
    """Euler's method on the flow ODE dx/dsigma = velocity, from sigma near 1 down to 0."""

    reference_name = "FlowMatchEulerDiscreteScheduler"
    space = FLOW
    config_defaults = FLOW_DEFAULTS
    refused_keys = tuple(FLOW_UNSUPPORTED)
    unsupported_values = FLOW_UNSUPPORTED
    takes_sigmas = True

    def __init__(self, config: SchedulerConfig):
        super().__init__(config)
        n_train = config.num_train_timesteps
        train_timesteps = np.linspace(1, n_train, n_train, dtype=np.float32)[::-1]
        train_sigmas = train_timesteps / np.float32(n_train)
        if not config.use_dynamic_shifting:  # dynamic shifting shifts at set_timesteps only
            train_sigmas = shift_sigmas(train_sigmas, float(config.shift))
        self.sigma_max, self.sigma_min = float(train_sigmas[0]), float(train_sigmas[-1])
        self.mu: float | None = None
        self.custom_sigmas: np.ndarray | None = None
        self.sigma_steps = np.zeros(0, dtype=np.float32)

    def dynamic_shift_mu(self, image_seq_len: int) -> float:
        """The mu diffusers' SD3 and FLUX pipelines pass for an image of `image_seq_len` latent tokens."""
        return dynamic_shift_mu(self.config, image_seq_len)

    def set_timesteps(self, num_inference_steps: int, mu: float | None = None, sigmas=None) -> None:
        """The tables for this many steps; `mu` is the shift of use_dynamic_shifting (required
        there, refused otherwise: diffusers would ignore it). `sigmas`: the unshifted sigmas
        of each step instead of the evenly spaced ones (FluxPipeline passes
        linspace(1, 1 / steps, steps)), one per step, shifted as the spaced ones are."""
        self.mu = checked_mu(self.config, mu)
        self.custom_sigmas = None if sigmas is None else self._checked_sigmas(sigmas, num_inference_steps)
        super().set_timesteps(num_inference_steps)

    @staticmethod
    def _checked_sigmas(sigmas, steps: int) -> np.ndarray:
        values = np.asarray(sigmas, dtype=np.float64)
        if values.shape != (steps,) or not np.isfinite(values).all() or not ((values > 0) & (values <= 1)).all():
            raise ConfigError(f"custom sigmas must be {steps} finite values in (0, 1], one per step")
        return values.astype(np.float32)  # as diffusers: np.array(sigmas).astype(np.float32)

    def _plan(self, num_inference_steps: int) -> None:
        config = self.config
        n_train = config.num_train_timesteps
        # float64, as diffusers' NumPy stage; then float32, as its torch tensors.
        if self.custom_sigmas is not None:
            sigmas = self.custom_sigmas
        else:
            sigmas = np.linspace(self.sigma_max * n_train, self.sigma_min * n_train, num_inference_steps) / n_train
        if config.use_dynamic_shifting:
            sigmas = time_shift(config.time_shift_type, self.mu, sigmas)
        else:
            sigmas = shift_sigmas(sigmas, float(config.shift))
        if config.shift_terminal:  # 0 means none, as in diffusers
            sigmas = stretch_to_terminal(sigmas, config.shift_terminal)
        sigmas = sigmas.astype(np.float32)
        self.timesteps = sigmas * np.float32(n_train)
        self.sigmas = np.append(sigmas, np.float32(0.0))
        self.sigma_steps = self.sigmas[1:] - self.sigmas[:-1]

    @property
    def init_noise_sigma(self) -> float:
        return 1.0

    def scale_model_input(self, sample: np.ndarray, step_index: int) -> np.ndarray:
        return sample

    def step(
        self, model_output: np.ndarray, step_index: int, sample: np.ndarray, generator: TorchGenerator | None = None
    ) -> np.ndarray:
        return sample + self.sigma_steps[step_index] * model_output

    def add_noise(self, original: np.ndarray, noise: np.ndarray, step_index: int) -> np.ndarray:
        """diffusers' scale_noise at this step's sigma: sigma * noise + (1 - sigma) * original."""
        sigma = self.sigmas[step_index].astype(original.dtype)
        return sigma * noise + (1 - sigma) * original
