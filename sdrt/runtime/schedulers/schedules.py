"""Schedule types: how a sampler spaces its noise levels, as A1111 names them (its "Schedule
type" menu, the A1111 API's `scheduler` field). Each one is a set of diffusers scheduler config
overrides, so a sampler with a schedule type still equals its diffusers namesake configured the
same way; a schedule type applies to the samplers whose diffusers class reads its keys.

"automatic" keeps the model's scheduler config (diffusers' behaviour). A1111's other schedule
types (Polyexponential, KL Optimal, Align Your Steps, Simple, Normal, DDIM, Beta) have no
diffusers equivalent and are refused by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sdrt.errors import ConfigError


@dataclass(frozen=True)
class ScheduleEntry:
    name: str  # sdrt's name (CLI, requests)
    label: str  # what A1111 shows and writes as "Schedule type"
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def supports(self, config_keys) -> bool:
        """Whether a sampler whose diffusers class reads `config_keys` can take this schedule."""
        return all(key in config_keys for key in self.overrides)


_ENTRIES = (
    ScheduleEntry("automatic", "Automatic"),
    ScheduleEntry("karras", "Karras", {"use_karras_sigmas": True, "use_exponential_sigmas": False}),
    ScheduleEntry("exponential", "Exponential", {"use_exponential_sigmas": True, "use_karras_sigmas": False}),
    # diffusers' documented equivalent of A1111's "SGM Uniform".
    ScheduleEntry("sgm_uniform", "SGM Uniform", {"timestep_spacing": "trailing"}),
)
SCHEDULES: dict[str, ScheduleEntry] = {entry.name: entry for entry in _ENTRIES}
SCHEDULE_NAMES = tuple(SCHEDULES)
DEFAULT_SCHEDULE = "automatic"
#: A1111's schedule types with no diffusers equivalent (refused by name, not as unknown).
A1111_ONLY_SCHEDULES = (
    "uniform",
    "polyexponential",
    "kl optimal",
    "align your steps",
    "simple",
    "normal",
    "ddim",
    "beta",
    "align your steps gits",
    "align your steps 11",
    "align your steps 32",
)


def schedule_entry(name: str) -> ScheduleEntry:
    """A schedule by sdrt name or A1111 label (any case)."""
    key = str(name).strip().lower().replace(" ", "_")
    if key in SCHEDULES:
        return SCHEDULES[key]
    if str(name).strip().lower() in A1111_ONLY_SCHEDULES:
        raise ConfigError(
            f"schedule type {name!r} has no diffusers equivalent in sdrt; choose one of "
            f"{', '.join(e.label for e in _ENTRIES)}"
        )
    raise ConfigError(f"unknown schedule type {name!r}; choose one of {', '.join(SCHEDULE_NAMES)}")


def schedule_label(name: str) -> str:
    entry = SCHEDULES.get(name)
    return entry.label if entry else name


def schedule_overrides(schedule: str, sampler_name: str, config_keys, fixed: Mapping[str, Any]) -> dict[str, Any]:
    """The config overrides of `schedule` for a sampler whose class reads `config_keys` and whose
    registry entry already forces `fixed`; a schedule the sampler cannot take is refused."""
    entry = schedule_entry(schedule)
    if not entry.overrides:
        return {}
    if any(key in fixed for key in entry.overrides):
        raise ConfigError(f"sampler {sampler_name!r} fixes its own schedule; use it with schedule type Automatic")
    if not entry.supports(config_keys):
        raise ConfigError(
            f"sampler {sampler_name!r} does not take schedule type {entry.label!r} (its diffusers "
            "class has no such option); use Automatic"
        )
    return dict(entry.overrides)
