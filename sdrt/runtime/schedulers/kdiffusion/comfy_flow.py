"""ComfyUI's KSampler samplers on flow-matching models (FLUX.1, SD3): ComfyUI's rules
(comfy.py) with its CONST model sampling in place of EPS (comfy/model_sampling.py):

- the noise levels from the model sampling's table (comfy_flow_sigmas: ModelSamplingFlux or
  ModelSamplingDiscreteFlow with the workflow's shift) through the same schedulers;
- the model called with the sample as it is (calculate_input is the identity) at timestep
  sigma * 1000 (sdrt's flow convention: ComfyUI's FLUX takes sigma and scales it by 1000 itself,
  its SD3 takes sigma * multiplier); x0 = x - sigma * v (calculate_denoised);
- noise_scaling: the start is sigma * noise + (1 - sigma) * latent image (no max_denoise rule),
  and a noise mask's kept region is the latent image noised so at each level;
- inverse_noise_scaling: a run that ends above 0 (KSamplerAdvanced's leftover noise) returns
  its latents divided by 1 - its last level.

Only the samplers whose k-diffusion update ComfyUI runs unchanged on CONST models are here
(euler, heun, dpm_2, lms, dpmpp_2m, ddim); its ancestral and SDE samplers switch to
rectified-flow variants of their own there, not run by sdrt yet.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from sdrt.runtime.rng import GeneratorGroup, TorchGenerator
from sdrt.runtime.schedulers.config import BETA_DEFAULTS, SchedulerConfig
from sdrt.runtime.schedulers.flow import FLOW_DEFAULTS
from sdrt.runtime.schedulers.kdiffusion import family
from sdrt.runtime.schedulers.kdiffusion.comfy import DEFAULT_COMFY_SCHEDULER, ComfyRules, ComfySamplerName
from sdrt.runtime.schedulers.kdiffusion.comfy_flow_sigmas import (
    DISCRETE_FLOW,
    FLUX_SAMPLING,
    ComfyFlowSigmas,
    FlowModelSampling,
)
from sdrt.runtime.schedulers.kdiffusion.sampler import KDiffusionSampler
from sdrt.runtime.schedulers.spaces import FLOW


def default_model_sampling(config: SchedulerConfig) -> FlowModelSampling:
    """The model sampling when a request names none: ModelSamplingFlux at the largest shift for a
    scheduler that shifts by image size (FLUX.1 dev's, ComfyUI's 1.15), else discrete flow at the
    scheduler's shift (SD3's 3.0). ComfyUI's nodes always name one (sdrt.serve.comfy.dit_nodes)."""
    if config.use_dynamic_shifting:
        return FlowModelSampling(FLUX_SAMPLING, float(config.max_shift))
    return FlowModelSampling(DISCRETE_FLOW, float(config.shift))


class ComfyFlowRules(ComfyRules):
    """A k-diffusion sampler with ComfyUI's rules on a CONST (flow) model."""

    space = FLOW
    config_defaults = {**BETA_DEFAULTS, **FLOW_DEFAULTS}

    def __init__(self, config: SchedulerConfig, schedule: str = DEFAULT_COMFY_SCHEDULER, sdxl: bool = False):
        # The model sampling sets the shift: the scheduler's shift by image size is not this
        # sampler's (ComfyUI has none), so a family asks it for no `mu`.
        self.own_sampling = default_model_sampling(config)
        super().__init__(replace(config, use_dynamic_shifting=False), schedule, sdxl)

    def set_timesteps(self, num_inference_steps: int, mu: float | None = None, sigmas=None) -> None:
        """The tables for this many steps (a family's own `sigmas` are not used: ComfyUI's
        scheduler lays them out)."""
        super().set_timesteps(num_inference_steps)

    def _plan(self, num_inference_steps: int) -> None:
        sampling = self.ksampler_steps.model_sampling or self.own_sampling
        self.model = ComfyFlowSigmas(sampling)
        super()._plan(num_inference_steps)
        if len(self.timesteps):
            self.timesteps = (self.sigmas[:-1] * np.float32(self.config.num_train_timesteps)).astype(np.float32)

    @property
    def init_noise_sigma(self) -> float:
        """noise_scaling's weight of the noise: the first level (0 when the KSampler adds none)."""
        if not self.ksampler_steps.add_noise or len(self.schedule_sigmas) == 0:
            return 0.0
        return float(self.schedule_sigmas[0])

    def add_noise(self, original: np.ndarray, noise: np.ndarray, step_index: int) -> np.ndarray:
        """CONST's noise_scaling at the level: sigma * noise + (1 - sigma) * the latent image."""
        if step_index == 0:
            super().add_noise(original, noise, 0)  # keeps the latent image and its noise for a mask
        sigma = np.float32(self.init_noise_sigma if step_index == 0 else self.sigmas[step_index])
        start = np.float32(self.schedule_sigmas[0]) if step_index == 0 else sigma
        return noise * sigma + original * (np.float32(1) - start)

    def _noised(self, latent: np.ndarray, noise: np.ndarray, sigma: np.float32) -> np.ndarray:
        return noise * sigma + latent * (np.float32(1) - sigma)

    def scale_model_input(self, sample: np.ndarray, step_index: int) -> np.ndarray:
        if self.ksampler_steps.noise_mask is not None:
            return self._blended(sample, step_index)
        return sample

    def step(
        self,
        model_output: np.ndarray,
        step_index: int,
        sample: np.ndarray,
        generator: TorchGenerator | GeneratorGroup | None = None,
    ) -> np.ndarray:
        x = super().step(model_output, step_index, sample, generator)
        last = np.float32(self.schedule_sigmas[-1])
        if step_index == len(self.timesteps) - 1 and last != 0:
            x = x / (np.float32(1) - last)  # CONST's inverse_noise_scaling
        return x


def _flow(base: type[KDiffusionSampler], discard: bool = False, random_noise: bool = False) -> type[ComfyFlowRules]:
    namespace: dict[str, Any] = {
        "discard_penultimate": discard,
        "random_inpaint_noise": random_noise,
        "__doc__": f"ComfyUI's rules on {base.__name__} for a flow model.",
    }
    return type(f"ComfyFlow{base.__name__}", (ComfyFlowRules, base), namespace)


_FLOW_KSAMPLERS: dict[str, type[ComfyFlowRules]] = {
    "euler": _flow(family.KEuler),
    "heun": _flow(family.KHeun),
    "dpm_2": _flow(family.KDPM2, discard=True),
    "lms": _flow(family.KLMS),
    "dpmpp_2m": _flow(family.KDPMPP2M),
    "ddim": _flow(family.KEuler, random_noise=True),  # ComfyUI's "ddim" is sample_euler
}
#: ComfyUI's KSampler samplers sdrt runs on flow models; sdrt names them comfy_flow_<name>.
COMFY_FLOW_SAMPLER_NAMES = tuple(
    ComfySamplerName(f"comfy_flow_{name}", cls, name) for name, cls in _FLOW_KSAMPLERS.items()
)
