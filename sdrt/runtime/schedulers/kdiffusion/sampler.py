"""The k-diffusion sampler family in the loop's interface (sdrt.runtime.schedulers.base): one
class per k-diffusion sampler, each running its solver coroutine (solvers.py) one model call
per `step`, on A1111's noise levels (schedules.py) for the model's sigma table.

As A1111 runs them: the model is called at the fractional timestep of each noise level
(log-sigma interpolation), with the sample scaled by 1 / sqrt(sigma^2 + 1); the initial noise
is scaled by the first level; DPM2 and DPM2 a lay out one step more and drop the next-to-last
level (`discard_next_to_last_sigma`); the ancestral samplers draw their noise from the
generator that drew the initial latents (A1111's per-image generators: its `randn_like`), the
SDE samplers from a Brownian tree per image seed (brownian.py).

The solver holds the sample between calls: a hook that changes the latents between two calls
of one run does not reach it (k-diffusion has no such hook either).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np

from sdrt.errors import ConfigError
from sdrt.runtime.rng import GeneratorGroup, TorchGenerator
from sdrt.runtime.sampler_settings import SamplerSettings
from sdrt.runtime.schedulers.base import HALF, Scheduler, predict_x0
from sdrt.runtime.schedulers.config import BETA_DEFAULTS, SchedulerConfig
from sdrt.runtime.schedulers.kdiffusion import solvers
from sdrt.runtime.schedulers.kdiffusion.a1111_settings import schedule_shape, solver_settings
from sdrt.runtime.schedulers.kdiffusion.model_sigmas import ModelSigmas
from sdrt.runtime.schedulers.kdiffusion.schedules import AUTOMATIC, UNIFORM, k_schedule_entry, schedule_sigmas

#: The last levels a schedule keeps when it ends on a final zero (the next-to-last is dropped).
DISCARDED_INDEX = -2
#: A1111's cap on the denoising strength in its img2img step count (setup_img2img_steps).
MAX_IMG2IMG_STRENGTH = 0.999


def _no_noise(x: np.ndarray) -> solvers.Noise:
    zeros = np.zeros_like(x)
    return lambda sigma, sigma_next: zeros


class KDiffusionSampler(Scheduler):
    """One k-diffusion sampler: its solver, its default schedule and its noise."""

    config_defaults = {**BETA_DEFAULTS}
    #: The solver coroutine (solvers.py) and the keyword arguments A1111 passes it.
    solver: ClassVar[Callable[..., solvers.Solver]]
    solver_options: ClassVar[Mapping[str, Any]] = {}
    #: Whether the solver takes Karras churn (Euler, Heun, DPM2).
    churns: ClassVar[bool] = False
    #: Whether A1111 passes it eta (eta_ancestral: k-diffusion's function takes one) and s_noise
    #: (sampler_extra_params) apart from churn (sdrt.runtime.schedulers.kdiffusion.a1111_settings).
    takes_eta_ancestral: ClassVar[bool] = False
    takes_s_noise: ClassVar[bool] = False
    #: A1111's schedule when the request says Automatic (its sampler table's 'scheduler').
    default_schedule: ClassVar[str] = UNIFORM
    #: A1111's discard_next_to_last_sigma (DPM2, DPM2 a, DPM++ 3M SDE).
    discard_next_to_last_sigma: ClassVar[bool] = False
    #: Whether A1111's always_discard_next_to_last_sigma option reaches the sampler (ComfyUI's: no).
    takes_discard_option: ClassVar[bool] = True
    #: Whether A1111's sampler settings (sdrt.runtime.sampler_settings) reach it (ComfyUI's: no).
    takes_a1111_settings: ClassVar[bool] = True
    #: Whether a run from an image starts as A1111's img2img (start_at_strength and
    #: sdrt.runtime.loop.a1111_img2img); ComfyUI's samplers start from the given latents instead.
    starts_images_as_a1111: ClassVar[bool] = True
    #: Whether the fresh noise comes from a Brownian tree per image seed (the SDE samplers).
    brownian: ClassVar[bool] = False
    #: Whether the model calls follow the model's outputs (DPM adaptive): only the first is laid
    #: out before the run, each next one as the solver yields it (the loop's stage end follows).
    adaptive: ClassVar[bool] = False

    def __init__(self, config: SchedulerConfig, schedule: str = AUTOMATIC, sdxl: bool = False):
        super().__init__(config)
        self.model = ModelSigmas(config)
        self.schedule = k_schedule_entry(schedule).name
        self.sdxl = sdxl
        self.schedule_sigmas = np.zeros(1, dtype=np.float32)
        self._solver: solvers.Solver | None = None
        self._generator: TorchGenerator | GeneratorGroup | None = None
        self._noise: solvers.Noise | None = None
        #: The whole schedule's levels (the Brownian trees' range), before img2img keeps its tail.
        self.full_sigmas = self.schedule_sigmas
        #: (latents, mask of the region to keep): A1111's inpainting blend of every denoised prediction.
        self.keep: tuple[np.ndarray, np.ndarray] | None = None
        #: The fresh noise's generator when not the loop's (A1111's ENSD: seeds + delta).
        self.step_generator: TorchGenerator | GeneratorGroup | None = None
        #: A1111's always_discard_next_to_last_sigma, set per request (Pipeline.new_sampler).
        self.always_discard = False
        #: A1111's sampler settings, set per request (Pipeline.new_sampler) where they reach the sampler.
        self.settings = SamplerSettings()

    @property
    def discards(self) -> bool:
        """Whether the schedule lays out one step more and drops its next-to-last level."""
        return self.discard_next_to_last_sigma or self.always_discard

    @classmethod
    def from_config(cls, config: Mapping[str, Any], schedule: str = AUTOMATIC) -> Scheduler:
        sampler = super().from_config(config)
        assert isinstance(sampler, KDiffusionSampler)
        sampler.schedule = k_schedule_entry(schedule).name
        return sampler

    def _levels(self, num_inference_steps: int) -> np.ndarray:
        """The schedule's noise levels for this many steps, as A1111's get_sigmas gives them."""
        steps = num_inference_steps + (1 if self.discards else 0)
        shape, _ = schedule_shape(self)
        sigmas = schedule_sigmas(self.schedule, self.default_schedule, steps, self.model, self.sdxl, shape)
        if self.discards:
            sigmas = np.delete(sigmas, len(sigmas) + DISCARDED_INDEX)
        if len(sigmas) < 2 or not np.all(np.isfinite(sigmas)) or np.any(sigmas[:-1] <= 0):
            raise ConfigError(
                f"schedule {self.schedule!r} gives no usable noise levels for {num_inference_steps} steps"
            )
        return sigmas.astype(np.float32)

    def _plan(self, num_inference_steps: int) -> None:
        self.full_sigmas = self.schedule_sigmas = self._levels(num_inference_steps)
        self._plan_calls()

    def start_at_strength(self, strength: float, fix_steps: bool = False) -> None:
        """A1111's image-to-image (sd_samplers_common.setup_img2img_steps, KDiffusionSampler.
        sample_img2img): of the schedule for the requested steps (with `fix_steps`, for
        steps / strength, so the requested steps all run), the tail from the level
        steps - t_enc - 1 on, t_enc = int(min(strength, 0.999) * steps) (steps - 1 with
        `fix_steps`); the run then starts from that tail's first level."""
        requested = self.num_inference_steps
        capped = min(float(strength), MAX_IMG2IMG_STRENGTH)
        if fix_steps:
            steps, kept = int(requested / capped), requested - 1
        else:
            steps, kept = requested, int(capped * requested)
        self.full_sigmas = self._levels(steps)
        self.schedule_sigmas = self.full_sigmas[steps - kept - 1 :]
        self._plan_calls()

    def noised_image(self, image_latents: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """A1111's img2img start: the image's latents plus the noise at the tail's first level."""
        return image_latents + noise * np.float32(self.schedule_sigmas[0])

    def _plan_calls(self) -> None:
        calls = self._dry_run()
        self.sigmas = np.append(calls, self.schedule_sigmas[-1]).astype(np.float32)
        self.timesteps = self.call_timesteps(calls)
        self._solver = None

    def call_timesteps(self, calls: np.ndarray) -> np.ndarray:
        """The model's timestep input at each call's noise level."""
        return self.model.sigma_to_t(calls)

    def _lay_out(self, sigma: float) -> None:
        """An adaptive solver's next call, at `sigma`, appended to the run's calls."""
        level = np.float32(sigma)
        self.sigmas = np.insert(self.sigmas, len(self.sigmas) - 1, level).astype(np.float32)
        self.timesteps = np.append(self.timesteps, self.call_timesteps(np.array([level]))).astype(np.float32)

    def _start(self, x: np.ndarray, noise: solvers.Noise) -> solvers.Solver:
        options = {**self.solver_options, **solver_settings(self)}
        return type(self).solver(x, self.schedule_sigmas, noise, **options)

    def _dry_run(self) -> np.ndarray:
        """The noise level of every model call, from a run on a one-value sample (of an adaptive
        solver, the first call's only: the others follow the model's outputs)."""
        x = np.zeros(1, dtype=np.float32)
        run = self._start(x, _no_noise(x))
        levels = []
        try:
            levels.append(next(run)[1])
            while not self.adaptive:
                levels.append(run.send(x)[1])
        except StopIteration:
            pass
        return np.asarray(levels, dtype=np.float32)

    @property
    def init_noise_sigma(self) -> float:
        return float(self.schedule_sigmas[0])

    @property
    def text_noise_scale(self) -> float:
        """A1111's txt2img start (KDiffusionSampler.sample): the noise times the first level, or with
        its SGM noise multiplier, times sqrt(1 + first level^2) (float32, as A1111's tensor math)."""
        if not self.settings.sgm_noise_multiplier:
            return self.init_noise_sigma
        first = np.float32(self.schedule_sigmas[0])
        return float(np.sqrt(np.float32(1) + first * first))

    def scale_model_input(self, sample: np.ndarray, step_index: int) -> np.ndarray:
        sigma = self.sigmas[step_index]
        return sample * (np.float32(1) / (sigma**2 + np.float32(1)) ** HALF)

    def _fresh_noise(self, x: np.ndarray) -> solvers.Noise:
        if self.brownian:
            from sdrt.runtime.schedulers.kdiffusion.brownian import brownian_noise

            return brownian_noise(x, self.full_sigmas, lambda: self._generator)

        def draw(sigma: float, sigma_next: float) -> np.ndarray:
            source = self._generator if self.step_generator is None else self.step_generator
            generator = self.need_generator(source, type(self).__name__)  # type: ignore[arg-type]
            return generator.randn(x.shape).astype(np.float32)

        return draw

    def step(
        self,
        model_output: np.ndarray,
        step_index: int,
        sample: np.ndarray,
        generator: TorchGenerator | GeneratorGroup | None = None,
    ) -> np.ndarray:
        self._generator = generator
        if step_index == 0 or self._solver is None:
            if step_index != 0:
                raise ConfigError("k-diffusion samplers run a schedule from its first step only")
            self._solver = self._start(sample, self._fresh_noise(sample))
            next(self._solver)
        denoised = self._denoised(model_output, sample, step_index)
        if self.keep is not None:
            denoised = self._blend(denoised)
        try:
            x, sigma = self._solver.send(denoised.astype(np.float32))
        except StopIteration as done:
            self._solver = None
            return done.value if self.keep is None else self._blend(done.value)
        if self.adaptive and step_index + 1 == len(self.timesteps):
            self._lay_out(sigma)
        return x

    def _blend(self, latents: np.ndarray) -> np.ndarray:
        """A1111's inpainting blend (CFGDenoiser's, after each prediction, and the sampled latents'):
        the kept region from the image's latents."""
        assert self.keep is not None
        image_latents, keep = self.keep
        return (image_latents * keep + latents * (np.float32(1) - keep)).astype(np.float32)

    def _denoised(self, model_output: np.ndarray, sample: np.ndarray, step_index: int) -> np.ndarray:
        """The denoised prediction the solver is sent for a model output."""
        return predict_x0(self.config.prediction_type, model_output, sample, self.sigmas[step_index])

    def add_noise(self, original: np.ndarray, noise: np.ndarray, step_index: int) -> np.ndarray:
        return original + noise * self.sigmas[step_index].astype(original.dtype)
