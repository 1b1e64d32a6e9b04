"""NumPy samplers with the numerics of their diffusers namesakes, and the registry that is the
one source of every list of sampler names (CLI choices, PNG and A1111 names, serve, tests).

A registry entry is a sampler (the update rule, one class per family) plus the config
overrides that make a variant of it: "DPM++ 2M Karras" is DPM++ 2M with Karras sigmas, not a
class of its own. `sampler_from_config(name, scheduler_config)` builds one for a model.

Each sampler samples one model space (sdrt.runtime.schedulers.spaces): `SAMPLERS` holds them
all (look-ups by name), `sampler_names(space)` / `sampler_entries(space)` list one space's, and
`SAMPLER_NAMES` / `DISPLAY_NAMES` list the diffusion samplers, the ones the SD families take.

Two families of diffusion samplers sit in the one registry: the diffusers-equal ones above
(`family` DIFFUSERS) and the k-diffusion ones (`family` KDIFFUSION, sdrt.runtime.schedulers.
kdiffusion: A1111's and ComfyUI's images), whose sdrt names are A1111's own aliases (k_euler_a,
k_dpmpp_2m, ...). `k_sampler_name(text)` resolves an A1111 label ("DPM++ 2M") or a ComfyUI name
("dpmpp_2m") to one of them; `K_SAMPLER_NAMES` lists them. The lists above stay the diffusers
family's, so what every existing name means does not change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sdrt.errors import ConfigError
from sdrt.runtime.schedulers.a1111_timesteps import A1111DDIM, A1111DDIMCFGPP, A1111PLMS
from sdrt.runtime.schedulers.a1111_unipc import A1111UniPC
from sdrt.runtime.schedulers.base import Scheduler
from sdrt.runtime.schedulers.ddim import DDIMScheduler
from sdrt.runtime.schedulers.ddpm import DDPMScheduler
from sdrt.runtime.schedulers.dpm_solver import DPMSolverMultistepScheduler
from sdrt.runtime.schedulers.euler import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from sdrt.runtime.schedulers.flow import FlowMatchEulerDiscreteScheduler
from sdrt.runtime.schedulers.flow_heun import FlowMatchHeunDiscreteScheduler
from sdrt.runtime.schedulers.flow_multistep import FlowDPMSolverMultistepScheduler, FlowUniPCMultistepScheduler
from sdrt.runtime.schedulers.heun import HeunDiscreteScheduler
from sdrt.runtime.schedulers.kdiffusion.comfy import COMFY_NOT_RUN
from sdrt.runtime.schedulers.kdiffusion.comfy import COMFY_SAMPLER_NAMES as _COMFY_NAMES
from sdrt.runtime.schedulers.kdiffusion.comfy_flow import COMFY_FLOW_SAMPLER_NAMES as _COMFY_FLOW_NAMES
from sdrt.runtime.schedulers.kdiffusion.comfy_schedules import COMFY_SCHEDULER_NAMES, check_comfy_scheduler
from sdrt.runtime.schedulers.kdiffusion.family import K_SAMPLER_NAMES as _K_NAMES
from sdrt.runtime.schedulers.kdiffusion.schedules import K_SCHEDULE_NAMES, K_SCHEDULES, k_schedule_entry
from sdrt.runtime.schedulers.kdiffusion.schedules import UNIFORM as K_UNIFORM
from sdrt.runtime.schedulers.lcm import LCMScheduler
from sdrt.runtime.schedulers.lms import LMSDiscreteScheduler
from sdrt.runtime.schedulers.pndm import PNDMScheduler
from sdrt.runtime.schedulers.schedules import (
    DEFAULT_SCHEDULE,
    SCHEDULE_NAMES,
    SCHEDULES,
    schedule_label,
    schedule_overrides,
)
from sdrt.runtime.schedulers.spaces import DIFFUSION, FLOW, SPACE_LABELS, SPACES, check_space
from sdrt.runtime.schedulers.tcd import TCDScheduler
from sdrt.runtime.schedulers.unipc import UniPCMultistepScheduler

AUTOMATIC_SCHEDULE = DEFAULT_SCHEDULE
KARRAS = {"use_karras_sigmas": True, "use_exponential_sigmas": False}
#: What makes DPM++ and UniPC sample a flow-matching model (diffusers' documented settings).
FLOW_SIGMAS = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}
#: The sampler families: diffusers-equal, and k-diffusion (A1111 / ComfyUI).
DIFFUSERS = "diffusers"
KDIFFUSION = "k-diffusion"
#: ComfyUI's KSampler samplers: the k-diffusion solvers with ComfyUI's rules (kdiffusion/comfy.py).
COMFYUI = "comfyui"


@dataclass(frozen=True)
class SamplerEntry:
    """One sampler as users name it: sdrt's name, its class, the config it forces, and the
    name AUTOMATIC1111 shows for it."""

    name: str
    cls: type[Scheduler]
    display_name: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    family: str = DIFFUSERS
    comfy_name: str | None = None  # ComfyUI's KSampler name (k-diffusion family)

    @property
    def reference_name(self) -> str:
        """The diffusers class this sampler equals (built with `overrides` on the same config)."""
        return self.cls.reference_name

    @property
    def stochastic(self) -> bool:
        return self.cls.stochastic

    @property
    def space(self) -> str:
        """The model space the sampler samples (spaces.DIFFUSION or spaces.FLOW)."""
        return self.cls.space

    def schedule_overrides(self, schedule: str) -> dict[str, Any]:
        """The config a schedule type adds to this sampler's (ConfigError if it cannot take it).
        A k-diffusion sampler computes its schedule itself: nothing to add, the name is checked."""
        if self.family == KDIFFUSION:
            if k_schedule_entry(schedule).name != AUTOMATIC_SCHEDULE and not getattr(self.cls, "takes_schedule", True):
                raise ConfigError(f"A1111's {self.display_name} takes no schedule type (Automatic only)")
            return {}
        if self.family == COMFYUI:
            if schedule != DEFAULT_SCHEDULE:
                check_comfy_scheduler(schedule)
            return {}
        return schedule_overrides(schedule, self.name, self.cls.config_defaults, self.overrides)

    def build(self, config: Mapping[str, Any], schedule: str = DEFAULT_SCHEDULE) -> Scheduler:
        if self.family in (KDIFFUSION, COMFYUI):
            return self.cls.from_config({**dict(config), **self.overrides}, schedule=schedule)  # type: ignore[call-arg]
        return self.cls.from_config({**dict(config), **self.overrides, **self.schedule_overrides(schedule)})

    def recorded_schedule(self, schedule: str) -> str | None:
        """The "Schedule type" PNG parameters record for this sampler run with `schedule`: for
        the k-diffusion family what A1111 records (the schedule Automatic resolves to, none
        when that is k-diffusion's own get_sigmas); else the label unless it is the default."""
        if self.family == COMFYUI:  # ComfyUI's scheduler name ("automatic": its default workflow's)
            return self.cls.schedule_name(schedule)  # type: ignore[attr-defined]
        if self.family == KDIFFUSION:
            name = k_schedule_entry(schedule).name
            if name == AUTOMATIC_SCHEDULE:
                # A1111 runs k-diffusion's own get_sigmas (unrecorded) where the sampler has no default.
                name = self.cls.default_schedule  # type: ignore[attr-defined]
                return None if name == K_UNIFORM else K_SCHEDULES[name].label
            return K_SCHEDULES[name].label
        return None if schedule == DEFAULT_SCHEDULE else schedule_label(schedule)


_ENTRIES = (
    SamplerEntry("lms", LMSDiscreteScheduler, "LMS"),
    SamplerEntry("euler", EulerDiscreteScheduler, "Euler"),
    SamplerEntry("euler_a", EulerAncestralDiscreteScheduler, "Euler a"),
    SamplerEntry("ddim", DDIMScheduler, "DDIM"),
    SamplerEntry("dpmpp_2m", DPMSolverMultistepScheduler, "DPM++ 2M"),
    SamplerEntry("dpmpp_2m_karras", DPMSolverMultistepScheduler, "DPM++ 2M Karras", KARRAS),
    # PLMS as documented, also for models whose scheduler file asks for PNDM's Runge-Kutta warm-up.
    SamplerEntry("pndm", PNDMScheduler, "PLMS", {"skip_prk_steps": True}),
    SamplerEntry("ddpm", DDPMScheduler, "DDPM"),
    SamplerEntry("heun", HeunDiscreteScheduler, "Heun"),
    SamplerEntry("unipc", UniPCMultistepScheduler, "UniPC"),
    SamplerEntry("lcm", LCMScheduler, "LCM"),  # latent consistency models, LCM-LoRA (1 to 8 steps)
    SamplerEntry("tcd", TCDScheduler, "TCD"),  # trajectory consistency distillation (TCD-LoRA), gamma = eta
    SamplerEntry("flow_euler", FlowMatchEulerDiscreteScheduler, "Euler (flow matching)"),  # SD3, FLUX
    SamplerEntry("flow_heun", FlowMatchHeunDiscreteScheduler, "Heun (flow matching)"),
    SamplerEntry("flow_dpmpp_2m", FlowDPMSolverMultistepScheduler, "DPM++ 2M (flow matching)", FLOW_SIGMAS),
    SamplerEntry("flow_unipc", FlowUniPCMultistepScheduler, "UniPC (flow matching)", FLOW_SIGMAS),
    *(SamplerEntry(k.name, k.cls, k.label, family=KDIFFUSION, comfy_name=k.comfy_name) for k in _K_NAMES),
    *(
        SamplerEntry(c.name, c.cls, f"{c.comfy_name} (ComfyUI)", family=COMFYUI, comfy_name=c.comfy_name)
        for c in _COMFY_NAMES
    ),
    *(
        SamplerEntry(c.name, c.cls, f"{c.comfy_name} (ComfyUI, flow)", family=COMFYUI, comfy_name=c.comfy_name)
        for c in _COMFY_FLOW_NAMES
    ),
    # A1111's timestep samplers (its sd_samplers_timesteps.py), by A1111's labels; sdrt's ddim, pndm
    # and unipc stay diffusers'.
    SamplerEntry("a1111_ddim", A1111DDIM, "DDIM", family=KDIFFUSION),
    SamplerEntry("a1111_ddim_cfgpp", A1111DDIMCFGPP, "DDIM CFG++", family=KDIFFUSION),
    SamplerEntry("a1111_plms", A1111PLMS, "PLMS", family=KDIFFUSION),
    SamplerEntry("a1111_unipc", A1111UniPC, "UniPC", family=KDIFFUSION),
)
#: Every sampler of every space, by sdrt name.
SAMPLERS: dict[str, SamplerEntry] = {entry.name: entry for entry in _ENTRIES}


def sampler_entries(space: str, family: str = DIFFUSERS) -> tuple[SamplerEntry, ...]:
    """The samplers of one model space and family, in registry order (flow samplers are of
    the diffusers family)."""
    check_space(space)
    return tuple(entry for entry in _ENTRIES if entry.space == space and entry.family == family)


def sampler_names(space: str, family: str = DIFFUSERS) -> tuple[str, ...]:
    """The sdrt names of one model space's samplers (what a model of that space is offered)."""
    return tuple(entry.name for entry in sampler_entries(space, family))


#: The diffusion samplers: what the SD families (every family sdrt serves so far) take.
SAMPLER_NAMES = sampler_names(DIFFUSION)
DEFAULT_SAMPLER = "lms"
#: A1111 display name -> sdrt name, of the diffusion samplers.
DISPLAY_NAMES = {entry.display_name: entry.name for entry in sampler_entries(DIFFUSION)}


#: The k-diffusion family's sdrt names, and every name that resolves to one of them.
K_SAMPLER_NAMES = sampler_names(DIFFUSION, KDIFFUSION)
_K_BY_ANY_NAME: dict[str, str] = {  # A1111's labels win over ComfyUI's names ("DDIM" is A1111's)
    **{comfy: name for name in K_SAMPLER_NAMES if (comfy := SAMPLERS[name].comfy_name)},
    **{SAMPLERS[name].display_name.lower(): name for name in K_SAMPLER_NAMES},
    **{name: name for name in K_SAMPLER_NAMES},
}


#: ComfyUI's samplers (its rules), by sdrt name, and ComfyUI's KSampler name -> sdrt name.
COMFY_SAMPLER_NAMES = sampler_names(DIFFUSION, COMFYUI)
COMFY_SAMPLERS = {SAMPLERS[name].comfy_name: name for name in COMFY_SAMPLER_NAMES}
#: The same for flow models (FLUX.1, SD3: kdiffusion/comfy_flow.py), the samplers ComfyUI runs unchanged there.
COMFY_FLOW_SAMPLERS = {SAMPLERS[name].comfy_name: name for name in sampler_names(FLOW, COMFYUI)}


#: Prefixes that say whose name a sampler name is ("a1111:DPM++ 2M", "comfyui:dpmpp_2m").
K_NAME_PREFIXES = ("a1111:", "comfyui:")
COMFY_PREFIX = K_NAME_PREFIXES[1]


def k_sampler_name(text: str) -> str:
    """The k-diffusion sampler an A1111 label ("Euler a"), ComfyUI name ("euler_ancestral") or
    sdrt name ("k_euler_a") means, with or without a K_NAME_PREFIXES prefix (ConfigError,
    listing the A1111 labels, if none)."""
    key = str(text).strip().lower() if isinstance(text, str) else ""
    for prefix in K_NAME_PREFIXES:
        key = key.removeprefix(prefix).strip()
    name = _K_BY_ANY_NAME.get(key)
    if name is None:
        labels = ", ".join(SAMPLERS[name].display_name for name in K_SAMPLER_NAMES)
        raise ConfigError(f"unknown k-diffusion sampler {text!r}; choose one of {labels}")
    return name


def resolve_sampler_name(text: str) -> str:
    """An sdrt sampler name as given, else the k-diffusion sampler an A1111 or ComfyUI name
    means (sdrt's own names win: "euler" stays the diffusers-equal Euler, "k_euler" is
    k-diffusion's with A1111's rules, "comfyui:euler" or "comfy_euler" ComfyUI's with its rules).
    ConfigError naming both lists if neither."""
    if text in SAMPLERS:
        return text
    comfy = str(text).strip().lower().removeprefix(COMFY_PREFIX) if isinstance(text, str) else ""
    if isinstance(text, str) and text.strip().lower().startswith(COMFY_PREFIX) and comfy in COMFY_SAMPLERS:
        return COMFY_SAMPLERS[comfy]  # "comfyui:NAME": ComfyUI's sampler, with ComfyUI's rules
    if isinstance(text, str) and text.strip().lower().startswith(COMFY_PREFIX) and comfy in COMFY_NOT_RUN:
        raise ConfigError(f"ComfyUI's sampler {comfy!r} is not run by sdrt: {COMFY_NOT_RUN[comfy]}")
    try:
        return k_sampler_name(text)
    except ConfigError:
        raise ConfigError(
            f"unknown sampler {text!r}; choose one of {', '.join(SAMPLER_NAMES)}, or a k-diffusion sampler by "
            f"sdrt, A1111 or ComfyUI name: {', '.join(K_SAMPLER_NAMES)}"
        ) from None


def sampler_entry(name: str) -> SamplerEntry:
    """A sampler of any space by sdrt name (ConfigError, listing the diffusion samplers, if none)."""
    try:
        return SAMPLERS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLER_NAMES)}") from None


def check_sampler_space(name: str, space: str) -> None:
    """ConfigError unless sampler `name` (a registered one) samples models of `space`."""
    entry = SAMPLERS[name]
    if entry.space != check_space(space):
        raise ConfigError(
            f"{name} is a {SPACE_LABELS[entry.space]} sampler; this model is a {SPACE_LABELS[space]} "
            f"model: choose one of {', '.join(sampler_names(space))}"
        )


def sampler_from_config(name: str, config: Mapping[str, Any], schedule: str = DEFAULT_SCHEDULE) -> Scheduler:
    """A sampler by sdrt name ('lms', 'euler', ...) configured from a scheduler_config.json dict,
    with a schedule type (sdrt.runtime.schedulers.schedules) on top."""
    return sampler_entry(name).build(config, schedule)


def recorded_schedule(sampler: str, schedule: str) -> str | None:
    """The "Schedule type" a generation's PNG parameters record (see SamplerEntry.recorded_schedule)."""
    entry = SAMPLERS.get(sampler)
    if entry is None:
        return None if schedule == DEFAULT_SCHEDULE else schedule_label(schedule)
    return entry.recorded_schedule(schedule)


def discard_option_applies(sampler: str) -> bool:
    """Whether A1111's always_discard_next_to_last_sigma changes this sampler's run (and its PNG
    parameters record "Discard penultimate sigma"): A1111's own samplers that do not already discard."""
    cls = sampler_entry(sampler).cls
    return getattr(cls, "takes_discard_option", False) and not getattr(cls, "discard_next_to_last_sigma", False)


def display_name(name: str) -> str:
    """The name A1111 shows for an sdrt sampler (what PNG parameters and `info` record)."""
    entry = SAMPLERS.get(name)
    return entry.display_name if entry else name


__all__ = [
    "DEFAULT_SAMPLER",
    "DEFAULT_SCHEDULE",
    "DIFFUSION",
    "FLOW",
    "SCHEDULES",
    "SCHEDULE_NAMES",
    "SPACES",
    "DISPLAY_NAMES",
    "DIFFUSERS",
    "KDIFFUSION",
    "COMFYUI",
    "COMFY_SAMPLERS",
    "COMFY_NOT_RUN",
    "COMFY_SAMPLER_NAMES",
    "COMFY_SCHEDULER_NAMES",
    "K_SAMPLER_NAMES",
    "K_SCHEDULE_NAMES",
    "k_sampler_name",
    "resolve_sampler_name",
    "SAMPLERS",
    "SAMPLER_NAMES",
    "SamplerEntry",
    "Scheduler",
    "check_sampler_space",
    "display_name",
    "recorded_schedule",
    "sampler_entries",
    "sampler_entry",
    "sampler_from_config",
    "sampler_names",
]
