"""ComfyUI's KSampler samplers: the k-diffusion solvers (solvers.py) with ComfyUI's rules in
place of A1111's (comfy/samplers.py, comfy/sample.py, comfy/k_diffusion/sampling.py):

- its noise levels (comfy_schedules.py: its schedulers, sigma table, denoise and start/end cut),
  dpm_2 and dpm_2_ancestral laying out one step more and dropping the next-to-last level;
- the model called at the nearest training timestep of each level;
- the initial noise scaled by sqrt(1 + sigma^2) when the schedule starts at the model's largest
  sigma (its max_denoise), else by sigma, and added to the latent image;
- the ancestral samplers' noise from a generator of their own, seeded seed + 1 (its
  default_noise_sampler on the CPU), the whole batch at once; the SDE samplers' from one Brownian
  tree seeded with the seed for the whole batch;
- a latent's noise mask (SetLatentNoiseMask) as KSamplerX0Inpaint blends: before each call the
  kept region is the latent image noised to the level, after it the prediction is the latent image;
- dpm_fast and dpm_adaptive over the schedule's own range (its last positive level to its
  first) with eta 0, ddim as euler, lcm and uni_pc / uni_pc_bh2 (ComfyUI's own samplers: uni_pc.py).
ComfyUI's CFG (uncond + (cond - uncond) * cfg on the denoised prediction) is the loop's guidance
on the model output, which is the same arithmetic for these linear parameterizations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from sdrt.errors import ConfigError
from sdrt.runtime.rng import TorchGenerator
from sdrt.runtime.schedulers.base import Scheduler
from sdrt.runtime.schedulers.config import SchedulerConfig
from sdrt.runtime.schedulers.kdiffusion import family, solvers
from sdrt.runtime.schedulers.kdiffusion.brownian import brownian_noise
from sdrt.runtime.schedulers.kdiffusion.comfy_schedules import (
    ComfyModelSigmas,
    KSamplerSteps,
    check_comfy_scheduler,
    comfy_sigmas,
)
from sdrt.runtime.schedulers.kdiffusion.dpm_adaptive import dpm_adaptive
from sdrt.runtime.schedulers.kdiffusion.dpm_fast import dpm_fast
from sdrt.runtime.schedulers.kdiffusion.sampler import KDiffusionSampler
from sdrt.runtime.schedulers.kdiffusion.uni_pc import BH1, BH2, uni_pc

#: What "automatic" means for a ComfyUI sampler: the scheduler of ComfyUI's default workflow.
DEFAULT_COMFY_SCHEDULER = "normal"
AUTOMATIC = "automatic"
#: Sampler.max_denoise: a first level this close to the model's largest is a full schedule.
MAX_DENOISE_TOLERANCE = 1e-5
#: default_noise_sampler seeds its CPU generator with the seed plus this.
CPU_NOISE_SEED_OFFSET = 1


class ComfyRules(KDiffusionSampler):
    """A k-diffusion sampler with ComfyUI's schedule, timesteps, initial noise and fresh noise."""

    #: KSampler.calculate_sigmas' DISCARD_PENULTIMATE_SIGMA_SAMPLERS.
    discard_penultimate: ClassVar[bool] = False
    takes_discard_option: ClassVar[bool] = False  # A1111's option; ComfyUI has none
    takes_a1111_settings: ClassVar[bool] = False  # A1111's sampler settings; ComfyUI has none
    #: ComfyUI's ddim: a noise mask's noise is drawn afresh (its inpaint_options "random").
    random_inpaint_noise: ClassVar[bool] = False
    #: The KSampler's latents are where a run starts (its denoise cuts the schedule itself).
    starts_images_as_a1111: ClassVar[bool] = False

    def __init__(self, config: SchedulerConfig, schedule: str = DEFAULT_COMFY_SCHEDULER, sdxl: bool = False):
        super().__init__(config, AUTOMATIC, sdxl)
        self.model: ComfyModelSigmas = ComfyModelSigmas(config)
        self.schedule = _scheduler(schedule)
        self.ksampler_steps = KSamplerSteps()
        self._masked: tuple[np.ndarray, np.ndarray] = (np.zeros(0, np.float32), np.zeros(0, np.float32))

    @classmethod
    def from_config(cls, config: Mapping[str, Any], schedule: str = DEFAULT_COMFY_SCHEDULER) -> Scheduler:
        sampler = Scheduler.from_config.__func__(cls, config)  # type: ignore[attr-defined]
        sampler.schedule = _scheduler(schedule)
        return sampler

    @staticmethod
    def schedule_name(schedule: str) -> str:
        """The ComfyUI scheduler a schedule name runs ("automatic": DEFAULT_COMFY_SCHEDULER)."""
        return _scheduler(schedule)

    def _plan(self, num_inference_steps: int) -> None:
        def schedule(steps: int) -> np.ndarray:
            return comfy_sigmas(self.schedule, steps, self.model, self.discard_penultimate)

        sigmas = self.ksampler_steps.cut(num_inference_steps, schedule)
        self._solver = None
        if len(sigmas) < 2:  # ComfyUI then returns the latents as given: nothing to run
            self.schedule_sigmas, self.sigmas = sigmas, sigmas
            self.timesteps = np.zeros(0, np.float32)
            return
        if not np.all(np.isfinite(sigmas)) or np.any(sigmas[:-1] <= 0):
            raise ConfigError(
                f"scheduler {self.schedule!r} gives no usable noise levels for {num_inference_steps} steps"
            )
        self.schedule_sigmas = sigmas.astype(np.float32)
        calls = self._dry_run()
        self.sigmas = np.append(calls, self.schedule_sigmas[-1]).astype(np.float32)
        self.timesteps = self.call_timesteps(calls)

    def call_timesteps(self, calls: np.ndarray) -> np.ndarray:
        return self.model.nearest_timestep(calls)

    @property
    def max_denoise(self) -> bool:
        first, largest = float(self.schedule_sigmas[0]), self.model.sigma_max
        return math.isclose(largest, first, rel_tol=MAX_DENOISE_TOLERANCE) or first > largest

    @property
    def init_noise_sigma(self) -> float:
        """noise_scaling's factor (0 when the KSampler adds no noise)."""
        if not self.ksampler_steps.add_noise or len(self.schedule_sigmas) == 0:
            return 0.0
        first = np.float32(self.schedule_sigmas[0])
        return float((np.float32(1) + first**2) ** np.float32(0.5)) if self.max_denoise else float(first)

    def add_noise(self, original: np.ndarray, noise: np.ndarray, step_index: int) -> np.ndarray:
        """noise_scaling: the latent image plus the noise at the first level's factor (at a later
        level, its sigma: scale_latent_inpaint). At the first, the latent image and the noise
        are kept for a noise mask's blend (KSamplerX0Inpaint keeps them)."""
        if step_index == 0:
            kept = noise if self.ksampler_steps.add_noise else np.zeros_like(noise)
            if self.random_inpaint_noise and self.ksampler_steps.noise_mask is not None:
                # ComfyUI's ddim: the mask's noise from seed + 1
                kept = TorchGenerator(self._seed() + CPU_NOISE_SEED_OFFSET).randn(noise.shape)
            self._masked = (original, kept)
        scale = self.init_noise_sigma if step_index == 0 else float(self.sigmas[step_index])
        return original + noise * np.float32(scale)

    def _blended(self, x: np.ndarray, step_index: int) -> np.ndarray:
        """KSamplerX0Inpaint's model input: the kept region at the latent image noised to this level."""
        mask, (latent, noise) = self.ksampler_steps.noise_mask, self._masked
        assert mask is not None
        rows = x.shape[0] // latent.shape[0]  # the guider's rows (one set per conditioning)
        mask, latent, noise = (np.concatenate([a] * rows) if rows > 1 else a for a in (mask, latent, noise))
        sigma = np.float32(self.sigmas[step_index])
        return x * mask + self._noised(latent, noise, sigma) * (np.float32(1) - mask)

    def _noised(self, latent: np.ndarray, noise: np.ndarray, sigma: np.float32) -> np.ndarray:
        """scale_latent_inpaint: the latent image at a level (EPS / V_PREDICTION's noise_scaling)."""
        return latent + noise * sigma

    def scale_model_input(self, sample: np.ndarray, step_index: int) -> np.ndarray:
        if self.ksampler_steps.noise_mask is not None:
            sample = self._blended(sample, step_index)
        return super().scale_model_input(sample, step_index)

    def _denoised(self, model_output: np.ndarray, sample: np.ndarray, step_index: int) -> np.ndarray:
        mask = self.ksampler_steps.noise_mask
        if mask is None:
            return super()._denoised(model_output, sample, step_index)
        denoised = super()._denoised(model_output, self._blended(sample, step_index), step_index)
        return denoised * mask + self._masked[0] * (np.float32(1) - mask)

    def _seed(self) -> int:
        seed = self.ksampler_steps.seed
        if seed is not None:
            return seed
        if not isinstance(self._generator, TorchGenerator):
            raise ConfigError("ComfyUI's samplers draw the whole batch from one seed: give one seed")
        return self._generator.seed

    def _fresh_noise(self, x: np.ndarray) -> solvers.Noise:
        if self.brownian:
            return brownian_noise(x, self.schedule_sigmas, lambda: TorchGenerator(self._seed()))
        generators: list[TorchGenerator] = []

        def draw(sigma: float, sigma_next: float) -> np.ndarray:
            if not generators:
                generators.append(TorchGenerator(self._seed() + CPU_NOISE_SEED_OFFSET))
            return generators[0].randn(x.shape).astype(np.float32)

        return draw


def _scheduler(name: str) -> str:
    return DEFAULT_COMFY_SCHEDULER if name == AUTOMATIC else check_comfy_scheduler(name)


class ComfyDPMFast(ComfyRules):
    """ComfyUI's dpm_fast: k-diffusion's over the schedule's range, its steps, eta 0."""

    solver = staticmethod(dpm_fast)
    reference_name = "k_diffusion.sampling.sample_dpm_fast"

    def _start(self, x, noise):
        sigmas = self.schedule_sigmas
        sigma_min = float(sigmas[-1]) if sigmas[-1] != 0 else float(sigmas[-2])
        return dpm_fast(x, sigmas, noise, sigma_min, float(sigmas[0]), len(sigmas) - 1, eta=0.0)


class ComfyDPMAdaptive(ComfyRules):
    """ComfyUI's dpm_adaptive: k-diffusion's from the schedule's first level to its last positive
    one, at its defaults (eta 0: no fresh noise)."""

    solver = staticmethod(dpm_adaptive)
    reference_name = "k_diffusion.sampling.sample_dpm_adaptive"
    adaptive = True

    def _start(self, x, noise):
        sigmas = self.schedule_sigmas
        sigma_min = float(sigmas[-1]) if sigmas[-1] != 0 else float(sigmas[-2])
        return dpm_adaptive(x, sigmas, noise, sigma_min, float(sigmas[0]))


class ComfyLCM(ComfyRules):
    solver = staticmethod(solvers.lcm)
    reference_name = "comfy.k_diffusion.sampling.sample_lcm"
    stochastic = True


def _uni_pc(variant: str) -> type[ComfyRules]:
    """ComfyUI's uni_pc (bh1) / uni_pc_bh2: its own UniPC (uni_pc.py), the next-to-last level dropped."""
    namespace = {
        "solver": staticmethod(uni_pc),
        "solver_options": {"variant": variant},
        "reference_name": "comfy.extra_samplers.uni_pc.sample_unipc",
        "discard_penultimate": True,
    }
    return type(f"ComfyUniPC{variant.upper()}", (ComfyRules,), namespace)


def _comfy(base: type[KDiffusionSampler], discard: bool = False, random_noise: bool = False) -> type[ComfyRules]:
    namespace = {
        "discard_penultimate": discard,
        "random_inpaint_noise": random_noise,
        "__doc__": f"ComfyUI's rules on {base.__name__}.",
    }
    return type(f"Comfy{base.__name__}", (ComfyRules, base), namespace)


@dataclass(frozen=True)
class ComfySamplerName:
    name: str  # sdrt's
    cls: type[ComfyRules]
    comfy_name: str  # ComfyUI's KSampler name


_KSAMPLERS: dict[str, type[ComfyRules]] = {
    "euler": _comfy(family.KEuler),
    "euler_ancestral": _comfy(family.KEulerAncestral),
    "heun": _comfy(family.KHeun),
    "dpm_2": _comfy(family.KDPM2, discard=True),
    "dpm_2_ancestral": _comfy(family.KDPM2Ancestral, discard=True),
    "lms": _comfy(family.KLMS),
    "dpm_fast": ComfyDPMFast,
    "dpmpp_2s_ancestral": _comfy(family.KDPMPP2SAncestral),
    "dpmpp_sde": _comfy(family.KDPMPPSDE),
    "dpmpp_2m": _comfy(family.KDPMPP2M),
    "dpmpp_2m_sde": _comfy(family.KDPMPP2MSDE),
    "dpmpp_2m_sde_heun": _comfy(family.KDPMPP2MSDEHeun),
    "dpmpp_3m_sde": _comfy(family.KDPMPP3MSDE),
    "ddim": _comfy(family.KEuler, random_noise=True),  # ComfyUI's "ddim" is sample_euler
    "lcm": ComfyLCM,
    "dpm_adaptive": ComfyDPMAdaptive,
    "uni_pc": _uni_pc(BH1),
    "uni_pc_bh2": _uni_pc(BH2),
}
#: ComfyUI's KSampler samplers sdrt runs, in ComfyUI's order; sdrt names them comfy_<name>.
COMFY_SAMPLER_NAMES = tuple(ComfySamplerName(f"comfy_{name}", cls, name) for name, cls in _KSAMPLERS.items())

_CFG_PP = (
    "CFG++: the step moves along the unconditional prediction (a post-CFG hook in ComfyUI), which "
    "sdrt's loop, guiding the model output, does not hand its samplers"
)
_GPU_TREE = (
    "its Brownian tree draws on the model's device (torch's CUDA generator on a GPU, which sdrt does not "
    "reproduce); on a CPU it is the sampler of the same name without _gpu, which sdrt runs"
)
_FORK = (
    "a solver of ComfyUI's own comfy/k_diffusion/sampling.py (not in the k-diffusion package): it needs its "
    "loop as a solver coroutine and a reference written from ComfyUI's source"
)
#: ComfyUI's KSAMPLER_NAMES / SAMPLER_NAMES that sdrt does not run, and what each would need.
COMFY_NOT_RUN: dict[str, str] = {
    **{name: _CFG_PP for name in ("euler_cfg_pp", "euler_ancestral_cfg_pp", "dpmpp_2s_ancestral_cfg_pp")},
    **{name: _CFG_PP for name in ("dpmpp_2m_cfg_pp", "res_multistep_cfg_pp", "res_multistep_ancestral_cfg_pp")},
    "gradient_estimation_cfg_pp": _CFG_PP,
    **{name: _GPU_TREE for name in ("dpmpp_sde_gpu", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde_gpu")},
    **{name: _FORK for name in ("heunpp2", "ddpm", "ipndm", "ipndm_v", "deis", "res_multistep")},
    **{name: _FORK for name in ("res_multistep_ancestral", "gradient_estimation", "er_sde", "seeds_2", "seeds_3")},
    **{name: _FORK for name in ("sa_solver", "sa_solver_pece")},
}
