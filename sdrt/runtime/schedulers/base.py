"""The interface every sdrt sampler implements, for diffusion and flow-matching models alike
(sdrt.runtime.schedulers.spaces), and the one conversion from a model's prediction (epsilon, v,
the sample itself, or a flow model's velocity) to the denoised sample x0.

The denoising loop calls, for step index `i`:

    model_input = sampler.scale_model_input(sample, i)
    model_output = unet(model_input, sampler.timesteps[i], ...)
    sample = sampler.step(model_output, i, sample, generator=generator)

After `set_timesteps(n)` every sampler, of either space, has the same tables and methods:

- `timesteps` (float32): the model's timestep input for each call (whole numbers for the
  samplers that address training timesteps; sigma * num_train_timesteps for flow matching).
- `sigmas` (float32): the noise level of the sample entering each call, and one more, the level
  the last call leaves. Diffusion samplers give it on the k-diffusion scale, sigma =
  sqrt((1 - alpha_bar) / alpha_bar), whatever their update works on; flow samplers give the
  noise's weight in [0, 1].
- `add_noise(original, noise, i)`: the space's forward process at `sigmas[i]`, which is where
  image-to-image and inpainting start: x0 + sigma * noise for the samplers whose model input is
  scaled, sqrt(alpha_bar) * x0 + sqrt(1 - alpha_bar) * noise for the others (both have a noise
  to signal ratio of sigma), and sigma * noise + (1 - sigma) * x0 for flow matching (diffusers'
  `scale_noise`).
- `init_noise_sigma`, `scale_model_input`, `step` as above.

So nothing in the interface belongs to one space (no method that only raises for the other):
the space is a class attribute, `space`, which the registry lists samplers by and a model family
is matched against. A sampler whose schedule needs a value from the caller takes it as a keyword
of `set_timesteps` (flow matching's `mu`), with the same positional signature as the others.

Steps are addressed by index, not by timestep value, so repeated timesteps (image-to-image,
Karras schedules) are never ambiguous. A sampler object carries the history of one denoising
run (LMS keeps its last derivatives): use one object per generation. Construction and
`set_timesteps` are cheap; every table is computed in `set_timesteps`, never in `step`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from sdrt.errors import ConfigError
from sdrt.runtime.rng import GeneratorGroup, TorchGenerator
from sdrt.runtime.schedulers.config import UNSUPPORTED_VALUES, SchedulerConfig
from sdrt.runtime.schedulers.spaces import DIFFUSION, FLOW_PREDICTION, SPACE_LABELS, SPACE_PREDICTIONS

HALF = np.float32(0.5)


def predict_x0(
    prediction_type: str, model_output: np.ndarray, sample: np.ndarray, sigma, alpha=None, clip: float | None = None
) -> np.ndarray:
    """The denoised sample implied by a model output.

    Variance preserving (`alpha` given): sample = alpha * x0 + sigma * noise, with alpha and
    sigma the square roots of alpha_bar and 1 - alpha_bar. Variance exploding (`alpha` None,
    the k-diffusion samplers): sample = x0 + sigma * noise, the model having seen
    sample / sqrt(sigma^2 + 1). Flow matching (flow_prediction, `alpha` unused): sample =
    (1 - sigma) * x0 + sigma * noise and the model predicts the velocity noise - x0, so
    x0 = sample - sigma * velocity. The arithmetic is diffusers' for each form, so float32
    results agree bit for bit. `clip` bounds x0 to [-clip, clip] (clip_sample)."""
    if prediction_type == FLOW_PREDICTION:
        x0 = sample - sigma * model_output
    elif prediction_type == "epsilon":
        x0 = sample - sigma * model_output if alpha is None else (sample - sigma * model_output) / alpha
    elif prediction_type == "v_prediction":
        if alpha is None:
            x0 = model_output * (-sigma / (sigma**2 + 1) ** HALF) + sample / (sigma**2 + 1)
        else:
            x0 = alpha * sample - sigma * model_output
    else:
        x0 = model_output
    return x0 if clip is None else np.clip(x0, -clip, clip)


def predict_epsilon(prediction_type: str, model_output: np.ndarray, sample: np.ndarray, alpha, sigma) -> np.ndarray:
    """The noise implied by a model output, variance preserving form (see predict_x0)."""
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "v_prediction":
        return alpha * model_output + sigma * sample
    return (sample - alpha * model_output) / sigma


class Scheduler(ABC):
    """A sampler: the update rule of one diffusers scheduler class, on NumPy tables."""

    #: Defaults for the config keys the diffusers class reads (and only those).
    config_defaults: ClassVar[dict[str, Any]]
    #: Further keys the diffusers class accepts whose unsupported values sdrt refuses.
    refused_keys: ClassVar[tuple[str, ...]] = ()
    #: Key -> (refused value, message) for the refused keys (config.UNSUPPORTED_VALUES by default).
    unsupported_values: ClassVar[Mapping[str, tuple[Any, str]]] = UNSUPPORTED_VALUES
    #: The model space this sampler samples (spaces.DIFFUSION or spaces.FLOW).
    space: ClassVar[str] = DIFFUSION
    #: The diffusers class this one reproduces.
    reference_name: ClassVar[str]
    #: UNet calls per requested step (diffusers' `order`): image-to-image starts at
    #: calls_per_step * the first step it keeps.
    calls_per_step: ClassVar[int] = 1
    #: Whether set_timesteps takes a caller's own sigmas (flow_euler's: FluxPipeline passes
    #: them to the schedulers that accept them).
    takes_sigmas: ClassVar[bool] = False
    #: Whether step() draws noise from the generator (so a batch's noise depends on its size).
    stochastic: ClassVar[bool] = False

    def __init__(self, config: SchedulerConfig):
        self.config = config
        self.num_inference_steps = 0
        self.timesteps = np.zeros(0, dtype=np.float32)
        self.sigmas = np.zeros(0, dtype=np.float32)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Scheduler:
        """Build from a `scheduler_config.json` dict of any diffusers scheduler class (of this
        sampler's space: a prediction type of the other space is refused)."""
        settings = SchedulerConfig.from_dict(config, cls.config_defaults, cls.refused_keys, cls.unsupported_values)
        allowed = SPACE_PREDICTIONS[cls.space]
        if settings.prediction_type not in allowed:
            label = SPACE_LABELS[cls.space]
            raise ConfigError(
                f"prediction_type {settings.prediction_type!r} is not a {label} model's; "
                f"{cls.reference_name} samples {label} models (prediction_type {', '.join(allowed)})"
            )
        return cls(settings)

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Compute every table the loop needs for this many steps, and reset the history."""
        self.check_steps(num_inference_steps)
        self.num_inference_steps = int(num_inference_steps)
        self._plan(self.num_inference_steps)

    @abstractmethod
    def _plan(self, num_inference_steps: int) -> None:
        """The tables and a fresh history for a run of this many (checked) steps."""

    @property
    @abstractmethod
    def init_noise_sigma(self) -> float:
        """Standard deviation of the initial latent noise."""

    @property
    def text_noise_scale(self) -> float:
        """The factor of text-to-image's initial noise: init_noise_sigma, unless a sampler's own
        rule says otherwise (A1111's SGM noise multiplier for its k-diffusion samplers)."""
        return self.init_noise_sigma

    @abstractmethod
    def scale_model_input(self, sample: np.ndarray, step_index: int) -> np.ndarray:
        """The UNet input for step `step_index`."""

    @abstractmethod
    def step(
        self,
        model_output: np.ndarray,
        step_index: int,
        sample: np.ndarray,
        generator: TorchGenerator | GeneratorGroup | None = None,
    ) -> np.ndarray:
        """The sample after step `step_index`. Stochastic samplers draw their noise from
        `generator` (the one that drew the initial latents, as in diffusers)."""

    @abstractmethod
    def add_noise(self, original: np.ndarray, noise: np.ndarray, step_index: int) -> np.ndarray:
        """`original` noised to the level of step `step_index` (image-to-image's start)."""

    def check_steps(self, num_inference_steps: int) -> None:
        if not isinstance(num_inference_steps, (int, np.integer)) or num_inference_steps < 1:
            raise ConfigError(f"steps must be a positive integer, got {num_inference_steps!r}")
        if num_inference_steps > self.config.num_train_timesteps:
            raise ConfigError(
                f"steps ({num_inference_steps}) cannot exceed the model's "
                f"{self.config.num_train_timesteps} training timesteps"
            )

    @staticmethod
    def need_generator(generator: TorchGenerator | None, name: str) -> TorchGenerator:
        if generator is None:
            raise ValueError(f"{name} is stochastic: step() needs the generator")
        return generator

    @property
    def clip(self) -> float | None:
        """The x0 bound when the config clips samples, else None."""
        return self.config.clip_sample_range if self.config.clip_sample else None
