"""Where A1111's sampler settings (sdrt.runtime.sampler_settings) change its k-diffusion samplers'
run, and what its PNG parameters then record, as A1111 decides both (modules/
sd_samplers_kdiffusion.py: KDiffusionSampler.sample, sampler_extra_params and get_sigmas;
sd_samplers_common.py: Sampler.initialize): a field is recorded only where its setting took effect.

- eta (eta_ancestral) reaches the k-diffusion functions that take one (the ancestral and SDE
  samplers, DPM fast and adaptive; `takes_eta_ancestral`), recorded "Eta" when not 1;
- s_churn, s_tmin, s_tmax (0: infinity) and s_noise reach Euler, Heun and DPM2 (`churns`),
  s_noise alone DPM fast, DPM2 a, DPM++ 2S a and the SDE samplers (`takes_s_noise`; not Euler a),
  each recorded ("Sigma churn", ...) when not k-diffusion's default."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sdrt.runtime.sampler_settings import SamplerSettings

if TYPE_CHECKING:
    from sdrt.runtime.schedulers.kdiffusion.sampler import KDiffusionSampler

#: The generation parameters' key of the recorded fields (A1111 label -> value, in A1111's order).
PARAMETERS_KEY = "a1111_settings"
#: k-diffusion's defaults (the Sampler's s_churn, s_tmin, s_tmax, s_noise A1111 compares with).
DEFAULT_CHURN = (0.0, 0.0, math.inf, 1.0)
#: k-diffusion's ancestral eta (A1111's eta_default for its k samplers).
DEFAULT_ETA = 1.0


def churn(settings: SamplerSettings) -> tuple[float, float, float, float]:
    """(s_churn, s_tmin, s_tmax, s_noise) as A1111 passes them (s_tmax 0: infinity)."""
    return settings.s_churn, settings.s_tmin, settings.s_tmax or math.inf, settings.s_noise


def solver_settings(sampler: KDiffusionSampler) -> dict[str, Any]:
    """The solver's keyword arguments from the sampler's settings (Sampler.initialize's)."""
    settings, options = sampler.settings, {}
    if sampler.takes_eta_ancestral:
        options["eta"] = float(settings.eta_ancestral)
    if sampler.churns:
        options["churn"] = churn(settings)
    elif sampler.takes_s_noise:
        options["s_noise"] = float(settings.s_noise)
    return options


def recorded_settings(sampler: KDiffusionSampler, from_image: bool) -> dict[str, bool | float]:
    """The PNG parameters fields A1111 adds for the sampler's settings (its extra_generation_params)."""
    settings = sampler.settings
    fields: dict[str, bool | float] = {}
    if settings.sgm_noise_multiplier and not from_image:  # sample() only: sample_img2img never reads it
        fields["SGM noise multiplier"] = True
    if sampler.takes_eta_ancestral and settings.eta_ancestral != DEFAULT_ETA:
        fields["Eta"] = settings.eta_ancestral
    labels = ("Sigma churn", "Sigma tmin", "Sigma tmax", "Sigma noise")
    given = (settings.s_churn, settings.s_tmin, settings.s_tmax, settings.s_noise)
    takes = (sampler.churns,) * 3 + (sampler.churns or sampler.takes_s_noise,)
    for label, value, passed, applied, default in zip(labels, given, churn(settings), takes, DEFAULT_CHURN):
        if applied and passed != default:
            fields[label] = value
    return fields


def settings_parameters(request: Any, scheduler_config: Mapping[str, Any], from_image: bool) -> dict:
    """The generation parameters of a request's A1111 sampler settings ({} where none took effect)."""
    settings = request.sampler_settings
    if settings == SamplerSettings():
        return {}
    from sdrt.runtime.schedulers import sampler_from_config
    from sdrt.runtime.schedulers.kdiffusion.sampler import KDiffusionSampler

    sampler = sampler_from_config(request.sampler, scheduler_config, request.schedule)
    if not isinstance(sampler, KDiffusionSampler) or not sampler.takes_a1111_settings:
        return {}
    sampler.settings = settings
    fields = recorded_settings(sampler, from_image)
    return {PARAMETERS_KEY: fields} if fields else {}
