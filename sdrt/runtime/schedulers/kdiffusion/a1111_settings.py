"""Where A1111's sampler settings (sdrt.runtime.sampler_settings) change its k-diffusion samplers'
run, and what its PNG parameters then record, as A1111 decides both (modules/
sd_samplers_kdiffusion.py: KDiffusionSampler.sample, sampler_extra_params and get_sigmas;
sd_samplers_common.py: Sampler.initialize): a field is recorded only where its setting took effect.

- eta (eta_ancestral) reaches the k-diffusion functions that take one (the ancestral and SDE
  samplers, DPM fast and adaptive; `takes_eta_ancestral`), recorded "Eta" when not 1;
- s_churn, s_tmin, s_tmax (0: infinity) and s_noise reach Euler, Heun and DPM2 (`churns`),
  s_noise alone DPM fast, DPM2 a, DPM++ 2S a and the SDE samplers (`takes_s_noise`; not Euler a),
  each recorded ("Sigma churn", ...) when not k-diffusion's default;
- the schedule's range and shape reach every schedule type but the sampler's own Uniform
  (Automatic where A1111's table names no schedule): the range is the model's, or 0.1 to 10 with
  use_old_karras_scheduler_sigmas, each end replaced by sigma_min / sigma_max when set (not 0) and
  not the model's own ("Schedule min sigma", "Schedule max sigma"); rho where the schedule has one
  (Karras 7, Polyexponential 1) when set and not that ("Schedule rho"); the Beta schedule's alpha and
  beta always recorded. Which functions then read the range is theirs (Uniform, Simple, DDIM and
  Align Your Steps do not), as in A1111."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sdrt.runtime.sampler_settings import SamplerSettings
from sdrt.runtime.schedulers.kdiffusion.schedules import AUTOMATIC, UNIFORM, ScheduleShape, resolved_schedule

if TYPE_CHECKING:
    from sdrt.runtime.schedulers.kdiffusion.sampler import KDiffusionSampler

#: The generation parameters' key of the recorded fields (A1111 label -> value, in A1111's order).
PARAMETERS_KEY = "a1111_settings"
#: k-diffusion's defaults (the Sampler's s_churn, s_tmin, s_tmax, s_noise A1111 compares with).
DEFAULT_CHURN = (0.0, 0.0, math.inf, 1.0)
#: k-diffusion's ancestral eta (A1111's eta_default for its k samplers).
DEFAULT_ETA = 1.0
#: A1111's get_sigmas range with use_old_karras_scheduler_sigmas (its option's label: "0.1 to 10").
OLD_KARRAS_RANGE = (0.1, 10.0)


def schedule_shape(sampler: KDiffusionSampler) -> tuple[ScheduleShape, dict[str, float]]:
    """(the shape A1111's get_sigmas gives the sampler's schedule, the fields it records)."""
    model, settings = sampler.model, sampler.settings
    entry = resolved_schedule(sampler.schedule, sampler.default_schedule)
    if entry.name == UNIFORM and sampler.schedule == AUTOMATIC:  # no scheduler: model_wrap.get_sigmas
        return ScheduleShape.of(model), {}
    low, high = OLD_KARRAS_RANGE if settings.use_old_karras_scheduler_sigmas else (model.sigma_min, model.sigma_max)
    rho, fields = None, {}
    if settings.sigma_min != 0 and settings.sigma_min != model.sigma_min:
        low = fields["Schedule min sigma"] = settings.sigma_min
    if settings.sigma_max != 0 and settings.sigma_max != model.sigma_max:
        high = fields["Schedule max sigma"] = settings.sigma_max
    if entry.default_rho is not None and settings.rho != 0 and settings.rho != entry.default_rho:
        rho = fields["Schedule rho"] = settings.rho
    if entry.name == "beta":
        fields["Beta schedule alpha"], fields["Beta schedule beta"] = settings.beta_dist_alpha, settings.beta_dist_beta
    shape = ScheduleShape(float(low), float(high), rho, settings.beta_dist_alpha, settings.beta_dist_beta)
    return shape, fields


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
    fields: dict[str, bool | float] = {**schedule_shape(sampler)[1]}
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
    settings = request.sampler_settings  # at its defaults too: the Beta schedule records its alpha and beta
    from sdrt.runtime.schedulers import sampler_from_config
    from sdrt.runtime.schedulers.kdiffusion.sampler import KDiffusionSampler

    sampler = sampler_from_config(request.sampler, scheduler_config, request.schedule)
    if not isinstance(sampler, KDiffusionSampler) or not sampler.takes_a1111_settings:
        return {}
    sampler.settings = settings
    fields = recorded_settings(sampler, from_image)
    return {PARAMETERS_KEY: fields} if fields else {}
