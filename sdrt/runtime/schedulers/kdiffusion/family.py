"""The k-diffusion samplers A1111 offers, one class each, with A1111's options for them (its
`sd_samplers_kdiffusion.samplers_k_diffusion` table: default schedule, discarded sigma,
Brownian noise, solver type) and the ComfyUI KSampler name of the same sampler."""

from __future__ import annotations

from dataclasses import dataclass

from sdrt.runtime.schedulers.kdiffusion import solvers
from sdrt.runtime.schedulers.kdiffusion.a1111_settings import solver_settings
from sdrt.runtime.schedulers.kdiffusion.dpm_adaptive import dpm_adaptive
from sdrt.runtime.schedulers.kdiffusion.dpm_fast import dpm_fast
from sdrt.runtime.schedulers.kdiffusion.lcm import KLCM
from sdrt.runtime.schedulers.kdiffusion.sampler import KDiffusionSampler

KARRAS = "karras"
EXPONENTIAL = "exponential"


def _sampler(name: str, solver, stochastic: bool = False, **attributes) -> type[KDiffusionSampler]:
    namespace = {
        "solver": staticmethod(solver),
        "reference_name": f"k_diffusion.sampling.sample_{solver.__name__}",
        "stochastic": stochastic,
        **attributes,
    }
    return type(name, (KDiffusionSampler,), namespace)


#: A1111's sampler settings each sampler takes beside its schedule (sdrt.runtime.schedulers.kdiffusion.a1111_settings).
ETA_AND_NOISE = {"takes_eta_ancestral": True, "takes_s_noise": True}

KEuler = _sampler("KEuler", solvers.euler, churns=True)
KEulerAncestral = _sampler("KEulerAncestral", solvers.euler_ancestral, stochastic=True, takes_eta_ancestral=True)
KHeun = _sampler("KHeun", solvers.heun, churns=True, calls_per_step=2)
KDPM2 = _sampler(
    "KDPM2", solvers.dpm_2, churns=True, calls_per_step=2, default_schedule=KARRAS, discard_next_to_last_sigma=True
)
KDPM2Ancestral = _sampler(
    "KDPM2Ancestral",
    solvers.dpm_2_ancestral,
    stochastic=True,
    **ETA_AND_NOISE,
    calls_per_step=2,
    default_schedule=KARRAS,
    discard_next_to_last_sigma=True,
)
KLMS = _sampler("KLMS", solvers.lms)
KDPMPP2M = _sampler("KDPMPP2M", solvers.dpmpp_2m, default_schedule=KARRAS)
KDPMPP2SAncestral = _sampler(
    "KDPMPP2SAncestral",
    solvers.dpmpp_2s_ancestral,
    stochastic=True,
    calls_per_step=2,
    default_schedule=KARRAS,
    **ETA_AND_NOISE,
)
KDPMPPSDE = _sampler(
    "KDPMPPSDE",
    solvers.dpmpp_sde,
    stochastic=True,
    calls_per_step=2,
    default_schedule=KARRAS,
    brownian=True,
    **ETA_AND_NOISE,
)
KDPMPP2MSDE = _sampler(
    "KDPMPP2MSDE", solvers.dpmpp_2m_sde, stochastic=True, default_schedule=EXPONENTIAL, brownian=True, **ETA_AND_NOISE
)
KDPMPP2MSDEHeun = _sampler(
    "KDPMPP2MSDEHeun",
    solvers.dpmpp_2m_sde,
    stochastic=True,
    default_schedule=EXPONENTIAL,
    brownian=True,
    solver_options={"solver_type": "heun"},
    **ETA_AND_NOISE,
)
KDPMPP3MSDE = _sampler(
    "KDPMPP3MSDE",
    solvers.dpmpp_3m_sde,
    stochastic=True,
    default_schedule=EXPONENTIAL,
    brownian=True,
    discard_next_to_last_sigma=True,
    **ETA_AND_NOISE,
)


class KDPMFast(KDiffusionSampler):
    """DPM fast: A1111 calls it with the model's sigma range and the step count (its schedule
    type only sets the initial noise's scale, the first level) and eta 1 (eta_ancestral); from
    an image, with the kept tail's range (its first level to its last positive one) and length."""

    solver = staticmethod(dpm_fast)
    reference_name = "k_diffusion.sampling.sample_dpm_fast"
    stochastic = True
    takes_eta_ancestral = takes_s_noise = True

    def _start(self, x, noise):
        sigmas, options = self.schedule_sigmas, solver_settings(self)
        if sigmas is not self.full_sigmas:  # image-to-image: A1111's sample_img2img arguments
            return dpm_fast(x, sigmas, noise, float(sigmas[-2]), float(sigmas[0]), len(sigmas) - 1, **options)
        model = self.model
        return dpm_fast(x, sigmas, noise, model.sigma_min, model.sigma_max, self.num_inference_steps, **options)


class KDPMAdaptive(KDiffusionSampler):
    """DPM adaptive: A1111 calls it with the model's sigma range and eta (eta_ancestral), the
    solver's other settings at k-diffusion's defaults (rtol 0.05, atol 0.0078, h_init 0.05); its
    schedule type, as DPM fast's, only sets the initial noise's scale. From an image, the kept
    tail's range. Its model calls follow the model's outputs (`adaptive`)."""

    solver = staticmethod(dpm_adaptive)
    reference_name = "k_diffusion.sampling.sample_dpm_adaptive"
    stochastic = True
    adaptive = True
    takes_eta_ancestral = True  # no s_noise: sampler_extra_params does not list it

    def _start(self, x, noise):
        sigmas, options = self.schedule_sigmas, solver_settings(self)
        if sigmas is not self.full_sigmas:  # image-to-image: A1111's sample_img2img arguments
            return dpm_adaptive(x, sigmas, noise, float(sigmas[-2]), float(sigmas[0]), **options)
        model = self.model
        return dpm_adaptive(x, sigmas, noise, model.sigma_min, model.sigma_max, **options)


@dataclass(frozen=True)
class KSamplerName:
    """How a k-diffusion sampler is named: sdrt's (A1111's own alias), A1111's label, ComfyUI's."""

    name: str
    cls: type[KDiffusionSampler]
    label: str
    comfy_name: str | None


K_SAMPLER_NAMES = (
    KSamplerName("k_euler", KEuler, "Euler", "euler"),
    KSamplerName("k_euler_a", KEulerAncestral, "Euler a", "euler_ancestral"),
    KSamplerName("k_heun", KHeun, "Heun", "heun"),
    KSamplerName("k_dpm_2", KDPM2, "DPM2", "dpm_2"),
    KSamplerName("k_dpm_2_a", KDPM2Ancestral, "DPM2 a", "dpm_2_ancestral"),
    KSamplerName("k_lms", KLMS, "LMS", "lms"),
    KSamplerName("k_dpmpp_2m", KDPMPP2M, "DPM++ 2M", "dpmpp_2m"),
    KSamplerName("k_dpmpp_2s_a", KDPMPP2SAncestral, "DPM++ 2S a", "dpmpp_2s_ancestral"),
    KSamplerName("k_dpmpp_sde", KDPMPPSDE, "DPM++ SDE", "dpmpp_sde"),
    KSamplerName("k_dpmpp_2m_sde", KDPMPP2MSDE, "DPM++ 2M SDE", "dpmpp_2m_sde"),
    KSamplerName("k_dpmpp_2m_sde_heun", KDPMPP2MSDEHeun, "DPM++ 2M SDE Heun", "dpmpp_2m_sde_heun"),
    KSamplerName("k_dpmpp_3m_sde", KDPMPP3MSDE, "DPM++ 3M SDE", "dpmpp_3m_sde"),
    KSamplerName("k_dpm_fast", KDPMFast, "DPM fast", "dpm_fast"),
    KSamplerName("k_dpm_ad", KDPMAdaptive, "DPM adaptive", "dpm_adaptive"),
    # ComfyUI's lcm runs the model's own sigmas without LCM's boundary condition: comfy_lcm.
    KSamplerName("k_lcm", KLCM, "LCM", None),
)
