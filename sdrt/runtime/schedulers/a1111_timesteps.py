"""A1111's timestep samplers DDIM, DDIM CFG++ and PLMS (its modules/sd_samplers_timesteps.py and
sd_samplers_timesteps_impl.py), which step on the model's alphas_cumprod at whole timesteps
rather than on k-diffusion's sigmas, and differ from diffusers' DDIM / PNDM:

- the timesteps are range(0, 1000, 1000 // steps) + 1, clipped to 999 (so 3 steps lay out 4
  timesteps), and a run makes one step fewer than it lays out: it ends at timestep 1, its
  sample there is the result (no final step to alpha_bar = 1);
- alphas_cumprod is the LDM model's (float64 betas, rounded once to float32), alpha_prev its
  value at the previous laid-out timestep; DDIM's eta noise is eta * sqrt((1 - a_prev) /
  (1 - a) * (1 - a / a_prev)), drawn from A1111's per-image generators (its randn_like);
- the model's epsilon comes straight from the UNet, or from a v-prediction as
  sqrt(a) * v + sqrt(1 - a) * x at the whole timestep;
- DDIM CFG++ guides with CFG scale / 12.5 and points the direction term at the unconditional
  epsilon (the sampler takes the unconditional prediction: `takes_unconditional`);
- PLMS's warm-up is a pseudo improved Euler step (two model calls), then Adams-Bashforth of
  order 2, 3 and 4;
- image-to-image (CompVisSampler.sample_img2img): for t_enc = int(min(strength, 0.999) *
  steps) (steps - 1 with img2img_fix_steps, on a layout of steps / strength), the run is the
  first t_enc laid-out timesteps, from the image's latents noised to laid-out timestep t_enc;
- inpainting: the model sees the sample with the kept region replaced by the image's clean
  latents (CFGDenoiserTimesteps' mask_before_denoising), and the result keeps them there.

UniPC, the third timestep sampler, is in a1111_unipc.py on the same base.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from typing import Any, ClassVar

import numpy as np

from sdrt.errors import ConfigError, GenerationError
from sdrt.runtime.rng import GeneratorGroup, TorchGenerator
from sdrt.runtime.schedulers.base import Scheduler
from sdrt.runtime.schedulers.config import BETA_DEFAULTS, SchedulerConfig
from sdrt.runtime.schedulers.kdiffusion.model_sigmas import model_alphas_cumprod
from sdrt.runtime.schedulers.kdiffusion.schedules import AUTOMATIC, UNIFORM, k_schedule_entry

#: get_timesteps lays timesteps out over range(0, 1000) whatever the model's training length.
A1111_TIMESTEP_RANGE = 1000
#: ... shifted by one and clipped to the last training timestep.
A1111_TIMESTEP_SHIFT = 1
A1111_LAST_TIMESTEP = 999
#: setup_img2img_steps caps the denoising strength here.
MAX_IMG2IMG_STRENGTH = 0.999
#: DDIM CFG++ divides the CFG scale by this (cond_scale_miltiplier = 1 / 12.5: CFG 0..12.5 -> 0..1).
CFGPP_SCALE_DIVISOR = 12.5
#: PLMS's Adams-Bashforth weights for orders 2, 3 and 4 (newest first) and their denominators.
ADAMS_BASHFORTH = {
    1: ((3.0, -1.0), 2.0),
    2: ((23.0, -16.0, 5.0), 12.0),
    3: ((55.0, -59.0, 37.0, -9.0), 24.0),
}
#: PLMS keeps this many past epsilons.
PLMS_HISTORY = 3

#: A sampler's run: yields the sample of each model call, is sent that call's epsilon (and the
#: unconditional epsilon, for CFG++), returns the result.
Run = Generator[np.ndarray, tuple[np.ndarray, np.ndarray | None], np.ndarray]
Noise = Callable[[], np.ndarray]


def a1111_timesteps(steps: int) -> np.ndarray:
    """CompVisSampler.get_timesteps: whole timesteps, ascending."""
    if steps > A1111_TIMESTEP_RANGE:
        raise ConfigError(f"A1111's timestep samplers lay out at most {A1111_TIMESTEP_RANGE} steps, got {steps}")
    laid_out = np.arange(0, A1111_TIMESTEP_RANGE, A1111_TIMESTEP_RANGE // steps) + A1111_TIMESTEP_SHIFT
    return np.clip(laid_out, 0, A1111_LAST_TIMESTEP).astype(np.int64)


def img2img_steps(requested: int, strength: float, fix_steps: bool) -> tuple[int, int]:
    """sd_samplers_common.setup_img2img_steps: (steps to lay out, t_enc)."""
    capped = min(float(strength), MAX_IMG2IMG_STRENGTH)
    if fix_steps:
        return (int(requested / capped) if strength > 0 else 0), requested - 1
    return requested, int(capped * requested)


class A1111TimestepSampler(Scheduler):
    """The base of A1111's timestep samplers in the loop's interface: the model is called at the
    whole timesteps of `timesteps` with the sample unscaled; `step` sends each epsilon to the
    sampler's run (`_run`), which holds the sample between calls."""

    config_defaults = {**BETA_DEFAULTS}
    #: A run from an image starts as A1111's img2img (sdrt.runtime.loop.a1111_img2img).
    starts_images_as_a1111: ClassVar[bool] = True
    #: What PNG parameters record as the schedule (none: A1111 has no schedule type for these).
    default_schedule: ClassVar[str] = UNIFORM
    #: A1111 has no schedule type for these samplers (SamplerEntry.schedule_overrides refuses one).
    takes_schedule: ClassVar[bool] = False
    #: Whether the run is sent the unconditional prediction too (DDIM CFG++).
    takes_unconditional: ClassVar[bool] = False
    #: A1111's sampler label (error messages).
    label: ClassVar[str]
    #: A1111's always_discard_next_to_last_sigma reaches these samplers (get_timesteps: one more step).
    takes_discard_option: ClassVar[bool] = True
    discard_next_to_last_sigma: ClassVar[bool] = False

    def __init__(self, config: SchedulerConfig, schedule: str = AUTOMATIC):
        super().__init__(config)
        self.alphas_cumprod = model_alphas_cumprod(config)
        self.eta = 0.0
        #: The laid-out timesteps the run covers (ascending), and the one an image is noised to.
        self.run_timesteps = np.zeros(0, dtype=np.int64)
        self.noise_timestep: int | None = None
        #: (latents, mask of the region to keep): A1111's inpainting (set by the img2img start).
        self.keep: tuple[np.ndarray, np.ndarray] | None = None
        #: The fresh noise's generator when not the loop's (A1111's ENSD: seeds + delta).
        self.step_generator: TorchGenerator | GeneratorGroup | None = None
        #: The unconditional prediction of the current call (the loop sets it: takes_unconditional).
        self.unconditional: np.ndarray | None = None
        self._generator: TorchGenerator | GeneratorGroup | None = None
        self._run: Run | None = None
        #: A1111's always_discard_next_to_last_sigma, set per request (Pipeline.new_sampler): get_timesteps
        #: then lays out one step more and drops nothing (the run makes that step too).
        self.always_discard = False

    @classmethod
    def from_config(cls, config: Mapping[str, Any], schedule: str = AUTOMATIC) -> Scheduler:
        if k_schedule_entry(schedule).name != AUTOMATIC:
            raise ConfigError(f"A1111's {cls.label} takes no schedule type (Automatic only), got {schedule!r}")
        return super().from_config(config)

    # -- the plan ------------------------------------------------------------------------------

    def _plan(self, num_inference_steps: int) -> None:
        self.run_timesteps = a1111_timesteps(num_inference_steps + int(self.always_discard))
        self.noise_timestep = None
        self._plan_calls()

    def start_at_strength(self, strength: float, fix_steps: bool = False) -> None:
        """A1111's image-to-image: the first t_enc laid-out timesteps, the image noised to the next."""
        steps, t_enc = img2img_steps(self.num_inference_steps, strength, fix_steps)
        if steps < 1:
            raise ConfigError("strength 0 leaves no denoising step")
        laid_out = a1111_timesteps(steps + int(self.always_discard))
        self.run_timesteps = laid_out[:t_enc]
        self.noise_timestep = int(laid_out[t_enc])
        self._plan_calls()

    def _plan_calls(self) -> None:
        calls = self._call_timesteps()
        if len(calls) == 0:
            raise ConfigError(f"A1111's {self.label} makes no model call for these steps; raise the steps")
        self.timesteps = np.asarray(calls, dtype=np.float32)
        levels = self._levels(np.append(calls, self._final_timestep()))
        self.sigmas = levels.astype(np.float32)
        self._run = None

    def _call_timesteps(self) -> np.ndarray:
        """The model timestep of every call (descending): every laid-out one but the first."""
        return self.run_timesteps[1:][::-1].astype(np.float32)

    def _final_timestep(self) -> float:
        return float(self.run_timesteps[0])

    def _levels(self, timesteps: np.ndarray) -> np.ndarray:
        """k-diffusion sigmas sqrt((1 - a) / a) at (whole parts of) timesteps, for the loop's table."""
        alpha = self.alphas_cumprod[np.floor(timesteps).astype(np.int64)].astype(np.float64)
        return np.sqrt((1 - alpha) / alpha)

    # -- the loop's interface ------------------------------------------------------------------

    @property
    def init_noise_sigma(self) -> float:
        return 1.0  # A1111 hands these samplers the noise as drawn

    def noised_image(self, image_latents: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """sample_img2img's start: the latents at alpha_bar of the laid-out timestep t_enc."""
        assert self.noise_timestep is not None  # start_at_strength ran
        alpha = self.alphas_cumprod[self.noise_timestep]
        return (image_latents * np.sqrt(alpha) + noise * np.sqrt(np.float32(1) - alpha)).astype(np.float32)

    def add_noise(self, original: np.ndarray, noise: np.ndarray, step_index: int) -> np.ndarray:
        alpha = self.alphas_cumprod[int(self.timesteps[step_index])]
        return (original * np.sqrt(alpha) + noise * np.sqrt(np.float32(1) - alpha)).astype(original.dtype)

    def scale_model_input(self, sample: np.ndarray, step_index: int) -> np.ndarray:
        return self._blend(sample) if self.keep is not None else sample

    def _blend(self, latents: np.ndarray) -> np.ndarray:
        """The kept region from the image's (clean) latents, for a batch of any multiple of the images."""
        assert self.keep is not None
        image_latents, keep = self.keep
        reps = latents.shape[0] // image_latents.shape[0]
        image_latents, keep = np.concatenate([image_latents] * reps), np.concatenate([keep] * reps)
        return (image_latents * keep + latents * (np.float32(1) - keep)).astype(np.float32)

    def _epsilon(self, model_output: np.ndarray, model_input: np.ndarray, timestep: float) -> np.ndarray:
        """CompVisTimestepsVDenoiser: epsilon from v at the timestep's whole part, else the output."""
        if self.config.prediction_type != "v_prediction":
            return model_output.astype(np.float32)
        alpha = self.alphas_cumprod[int(np.floor(timestep))]
        return (np.sqrt(alpha) * model_output + np.sqrt(np.float32(1) - alpha) * model_input).astype(np.float32)

    def step(
        self,
        model_output: np.ndarray,
        step_index: int,
        sample: np.ndarray,
        generator: TorchGenerator | GeneratorGroup | None = None,
    ) -> np.ndarray:
        self._generator = generator
        if step_index == 0 or self._run is None:
            if step_index != 0:
                raise ConfigError(f"A1111's {self.label} runs from its first step only")
            self._run = self._start(sample.astype(np.float32), self._fresh_noise(sample.shape))
            next(self._run)
        timestep = float(self.timesteps[step_index])
        model_input = self.scale_model_input(sample, step_index)
        epsilon = self._epsilon(model_output, model_input, timestep)
        unconditional = None
        if self.takes_unconditional:
            if self.unconditional is None:
                raise GenerationError(
                    f"A1111's {self.label} needs classifier-free guidance (a CFG scale above 1)", "guidance_scale"
                )
            unconditional = self._epsilon(self.unconditional, model_input, timestep)
            self.unconditional = None
        try:
            return self._run.send((epsilon, unconditional))
        except StopIteration as done:
            self._run = None
            return done.value if self.keep is None else self._blend(done.value)

    def _fresh_noise(self, shape: tuple[int, ...]) -> Noise:
        def draw() -> np.ndarray:
            source = self._generator if self.step_generator is None else self.step_generator
            generator = self.need_generator(source, type(self).__name__)  # type: ignore[arg-type]
            return generator.randn(shape).astype(np.float32)

        return draw

    def _start(self, x: np.ndarray, noise: Noise) -> Run:
        """The sampler's run from the initial sample (each of DDIM, PLMS and UniPC defines its own)."""
        raise NotImplementedError(f"{type(self).__name__} defines no run")

    # -- shared by DDIM and PLMS ---------------------------------------------------------------

    def _tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(alpha, alpha_prev as float64, sqrt(1 - alpha)) of the run's timesteps, as A1111's ddim/plms."""
        timesteps = self.run_timesteps
        alphas = self.alphas_cumprod[timesteps]
        previous = np.concatenate([[0], timesteps[:-1]])
        alphas_prev = self.alphas_cumprod[previous].astype(np.float64)
        return alphas, alphas_prev, np.sqrt(np.float32(1) - alphas)


class A1111DDIM(A1111TimestepSampler):
    """A1111's DDIM (sd_samplers_timesteps_impl.ddim), eta from the request (A1111's eta_ddim 0)."""

    reference_name = "A1111 sd_samplers_timesteps_impl.ddim"
    label = "DDIM"
    stochastic = True
    takes_eta = True

    def _start(self, x: np.ndarray, noise: Noise) -> Run:
        alphas, alphas_prev, sqrt_one_minus = self._tables()
        eta = float(self.eta)
        sigmas = eta * np.sqrt((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev))
        return self._ddim(x, alphas, alphas_prev, sqrt_one_minus, sigmas, noise)

    def _ddim(self, x, alphas, alphas_prev, sqrt_one_minus, sigmas, noise) -> Run:
        one = np.float32(1)
        for i in range(len(alphas) - 1):
            index = len(alphas) - 1 - i
            e_t, unconditional = yield x
            a_t, a_prev = np.float32(alphas[index]), np.float32(alphas_prev[index])
            sigma_t = np.float32(sigmas[index])
            pred_x0 = (x - sqrt_one_minus[index] * e_t) / np.sqrt(a_t)
            direction = e_t if unconditional is None else unconditional
            dir_xt = np.sqrt(one - a_prev - sigma_t**2) * direction
            x = np.sqrt(a_prev) * pred_x0 + dir_xt
            if sigma_t:
                x = x + sigma_t * noise()
            x = x.astype(np.float32)
        return x


class A1111DDIMCFGPP(A1111DDIM):
    """A1111's DDIM CFG++ (sd_samplers_timesteps_impl.ddim_cfgpp): the guided epsilon at CFG scale
    / 12.5 for x0, the unconditional epsilon for the direction."""

    reference_name = "A1111 sd_samplers_timesteps_impl.ddim_cfgpp"
    label = "DDIM CFG++"
    takes_unconditional = True

    def step(self, model_output, step_index, sample, generator=None):
        if self.unconditional is not None:  # the loop's u + s (c - u) -> u + s / 12.5 (c - u)
            u = self.unconditional.astype(np.float32)
            model_output = u + (model_output - u) / np.float32(CFGPP_SCALE_DIVISOR)
        return super().step(model_output, step_index, sample, generator)


class A1111PLMS(A1111TimestepSampler):
    """A1111's PLMS (sd_samplers_timesteps_impl.plms): n laid-out timesteps make n model calls
    (the first step calls twice, the last laid-out timestep is the end)."""

    reference_name = "A1111 sd_samplers_timesteps_impl.plms"
    label = "PLMS"

    def _call_timesteps(self) -> np.ndarray:
        calls = super()._call_timesteps()
        if len(calls) == 0:
            return calls
        warm_up = self.run_timesteps[max(len(self.run_timesteps) - 2, 0)]
        return np.insert(calls, 1, np.float32(warm_up))

    def _start(self, x: np.ndarray, noise: Noise) -> Run:
        alphas, alphas_prev, sqrt_one_minus = self._tables()

        def update(x, e_t, index):
            a_t, a_prev = np.float32(alphas[index]), np.float32(alphas_prev[index])
            pred_x0 = (x - sqrt_one_minus[index] * e_t) / np.sqrt(a_t)
            return (np.sqrt(a_prev) * pred_x0 + np.sqrt(np.float32(1) - a_prev) * e_t).astype(np.float32)

        return self._plms(x, len(alphas), update)

    @staticmethod
    def _plms(x, count, update) -> Run:
        old: list[np.ndarray] = []
        for i in range(count - 1):
            index = count - 1 - i
            e_t, _ = yield x
            if not old:  # pseudo improved Euler
                e_next, _ = yield update(x, e_t, index)
                e_prime = (e_t + e_next) / np.float32(2)
            else:
                weights, denominator = ADAMS_BASHFORTH[len(old)]
                total = np.float32(weights[0]) * e_t
                for weight, past in zip(weights[1:], reversed(old)):
                    total = total + np.float32(weight) * past
                e_prime = total / np.float32(denominator)
            x = update(x, e_prime, index)
            old.append(e_t)
            if len(old) > PLMS_HISTORY:
                old.pop(0)
        return x


__all__ = ["A1111DDIM", "A1111DDIMCFGPP", "A1111PLMS", "A1111TimestepSampler", "a1111_timesteps"]
