"""Where A1111's sampler settings (sdrt.runtime.sampler_settings) change its k-diffusion samplers'
run, and what its PNG parameters then record, as A1111 decides both (modules/
sd_samplers_kdiffusion.py: KDiffusionSampler.sample and get_sigmas; sd_samplers_common.py:
Sampler.initialize): a field is recorded only where its setting took effect."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sdrt.runtime.sampler_settings import SamplerSettings
from sdrt.runtime.schedulers.kdiffusion.sampler import KDiffusionSampler

#: The generation parameters' key of the recorded fields (A1111 label -> value, in A1111's order).
PARAMETERS_KEY = "a1111_settings"


def recorded_settings(sampler: KDiffusionSampler, from_image: bool) -> dict[str, bool | float]:
    """The PNG parameters fields A1111 adds for the sampler's settings (its extra_generation_params)."""
    settings = sampler.settings
    fields: dict[str, bool | float] = {}
    if settings.sgm_noise_multiplier and not from_image:  # sample() only: sample_img2img never reads it
        fields["SGM noise multiplier"] = True
    return fields


def settings_parameters(request: Any, scheduler_config: Mapping[str, Any], from_image: bool) -> dict:
    """The generation parameters of a request's A1111 sampler settings ({} where none took effect)."""
    settings = request.sampler_settings
    if settings == SamplerSettings():
        return {}
    from sdrt.runtime.schedulers import sampler_from_config

    sampler = sampler_from_config(request.sampler, scheduler_config, request.schedule)
    if not isinstance(sampler, KDiffusionSampler) or not sampler.takes_a1111_settings:
        return {}
    sampler.settings = settings
    fields = recorded_settings(sampler, from_image)
    return {PARAMETERS_KEY: fields} if fields else {}
