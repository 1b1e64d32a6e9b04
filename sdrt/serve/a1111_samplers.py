"""A1111's sampler names and schedule types as sdrt's samplers: on txt2img the labels of
k-diffusion samplers run that family (A1111's own images), else the diffusers-equal family of
the same names; and the eta each sampler runs with."""

from __future__ import annotations

from dataclasses import replace

from sdrt.errors import ConfigError
from sdrt.runtime.features.refiner import refiner_switches_mid_run
from sdrt.runtime.sampler_settings import SamplerSettings
from sdrt.runtime.schedulers import (
    DEFAULT_SAMPLER,
    DEFAULT_SCHEDULE,
    DIFFUSERS,
    DISPLAY_NAMES,
    K_SAMPLER_NAMES,
    SAMPLERS,
    display_name,
    k_sampler_name,
)
from sdrt.runtime.schedulers.kdiffusion.schedules import AUTOMATIC as K_AUTOMATIC
from sdrt.runtime.schedulers.kdiffusion.schedules import k_schedule_entry
from sdrt.runtime.schedulers.schedules import schedule_entry
from sdrt.serve.schemas import RequestError

#: What A1111 clients send for "no refiner".
NO_REFINER = ("", "none")
#: The sampler of a request that names none (A1111's API models: sampler_index's default "Euler").
A1111_DEFAULT_SAMPLER = "Euler"

# A1111 sampler names (lower case) to sdrt's, of every space (the request check refuses a sampler
# of another space than the model's by name); "DPM++ 2M Karras" keeps its own entry.
# The diffusers family's only: the k-diffusion family (sdrt's k_* names) shares A1111's labels.
A1111_SAMPLERS = {entry.display_name.lower(): entry.name for entry in SAMPLERS.values() if entry.family == DIFFUSERS}
#: Older A1111 sampler names carry their schedule: "Euler Karras" is Euler + Karras.
LEGACY_SCHEDULE_SUFFIXES = {" karras": "karras", " exponential": "exponential"}


def k_family_applies(body, image) -> bool:
    """Whether A1111's sampler names mean the k-diffusion family (A1111's own images) for this
    request: text-to-image (with the hires fix too) and image-to-image (inpainting too); with a
    refiner only for the samplers A1111 switches mid-run (sdrt.runtime.features.refiner: not its
    timestep samplers or DPM adaptive), the others keeping the diffusers-equal samplers."""
    refiner = getattr(body, "refiner_checkpoint", None)
    switch_at = getattr(body, "refiner_switch_at", None)
    has_refiner = refiner is not None and refiner.strip().lower() not in NO_REFINER
    if not has_refiner or (switch_at is not None and switch_at >= 1):
        return True
    chosen = _k_sampler(getattr(body, "sampler_name", None) or A1111_DEFAULT_SAMPLER, None)
    return chosen is not None and refiner_switches_mid_run(SAMPLERS[chosen[0]].cls)


def _k_sampler(sampler: str, schedule_type: str | None) -> tuple[str, str] | None:
    """(k-diffusion sampler, its schedule type) for an A1111 sampler label and schedule type,
    as A1111 runs them; None where the label names no k-diffusion sampler (DDIM, PLMS, UniPC,
    sdrt's own names: the diffusers-equal family runs those)."""
    if sampler in SAMPLERS:
        return None
    name, implied = sampler.strip(), None
    try:
        k_name = k_sampler_name(name)
    except ConfigError:
        for suffix, schedule in LEGACY_SCHEDULE_SUFFIXES.items():  # "DPM++ 2M Karras"
            if name.lower().endswith(suffix):
                name, implied = name[: -len(suffix)], schedule
                break
        try:
            k_name = k_sampler_name(name)
        except ConfigError:
            return None
    schedule = K_AUTOMATIC
    if schedule_type is not None and schedule_type.strip():
        try:
            schedule = k_schedule_entry(schedule_type).name
        except ConfigError as error:
            raise RequestError(400, f"scheduler: {error}", "scheduler") from None
    if schedule == K_AUTOMATIC and implied is not None:
        schedule = implied
    return k_name, schedule


def sdrt_sampler(sampler: str | None, schedule_type: str | None, k_family: bool = False) -> tuple[str, str]:
    """(sdrt sampler, schedule type) for A1111's sampler name and schedule type: "DPM++ 2M" +
    "Karras" is DPM++ 2M with Karras sigmas, as is the older name "DPM++ 2M Karras"; sdrt's own
    names are accepted too. With `k_family` (k_family_applies) A1111's labels of k-diffusion
    samplers name the k-diffusion family, with A1111's schedule types. A pair sdrt cannot run is
    refused by the request's check."""
    if k_family and sampler is not None:
        chosen = _k_sampler(sampler, schedule_type)
        if chosen is not None:
            return chosen
    schedule = DEFAULT_SCHEDULE
    if schedule_type is not None and schedule_type.strip():
        try:
            schedule = schedule_entry(schedule_type).name
        except ConfigError as error:
            raise RequestError(400, f"scheduler: {error}", "scheduler") from None
    if sampler is None:
        return DEFAULT_SAMPLER, schedule
    name = sampler.strip().lower()
    for suffix, implied in LEGACY_SCHEDULE_SUFFIXES.items():  # "DPM++ 2M Karras": the older A1111 names
        if name.endswith(suffix) and name not in A1111_SAMPLERS and name not in SAMPLERS:
            name = name[: -len(suffix)]
            schedule = implied if schedule == DEFAULT_SCHEDULE else schedule
    if name in SAMPLERS:
        return name, schedule
    if name not in A1111_SAMPLERS:
        raise RequestError(
            400,
            f"unknown sampler {sampler!r}; choose one of {', '.join(DISPLAY_NAMES)} (GET /sdapi/v1/samplers)",
            "sampler_name",
        )
    return A1111_SAMPLERS[name], schedule


#: The eta each sdrt sampler runs with, where eta means something but cannot be changed:
#: ancestral samplers add all their noise (A1111's eta 1). Samplers that take an eta (DDIM's
#: variance, TCD's gamma) get the request's; other samplers take none, in A1111 too. A1111's
#: k-diffusion samplers whose function takes an eta run the request's in place of the
#: eta_ancestral option (a1111_sampler_settings); its other stochastic ones (LCM) eta 1.
ANCESTRAL_ETA = 1.0
SAMPLER_ETA = {
    "euler_a": ANCESTRAL_ETA,
    **{
        name: ANCESTRAL_ETA
        for name in K_SAMPLER_NAMES
        if SAMPLERS[name].stochastic
        and not getattr(SAMPLERS[name].cls, "takes_eta", False)  # not A1111's DDIM
        and not getattr(SAMPLERS[name].cls, "takes_eta_ancestral", False)
    },
}


def a1111_sampler_settings(sampler: str, eta: float | None, settings: SamplerSettings) -> SamplerSettings:
    """The request's sampler settings: the options', with a payload's eta as the eta A1111's
    k-diffusion samplers take (Sampler.initialize: p.eta if given, else opts.eta_ancestral)."""
    if eta is None or not getattr(SAMPLERS[sampler].cls, "takes_eta_ancestral", False):
        return settings
    return replace(settings, eta_ancestral=float(eta))


def check_eta(sampler: str, eta: float | None) -> float | None:
    """The eta to pass on (samplers that take one: TCD's gamma), after refusing an eta that would
    change a sampler that runs with a fixed one."""
    if getattr(SAMPLERS[sampler].cls, "takes_eta", False):
        return eta
    if eta is None or sampler not in SAMPLER_ETA or eta == SAMPLER_ETA[sampler]:
        return None
    raise RequestError(
        400, f"eta: {display_name(sampler)} runs with eta {SAMPLER_ETA[sampler]:g} only, got {eta:g}", "eta"
    )
