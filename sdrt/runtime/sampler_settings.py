"""A1111's sampler settings (its options sgm_noise_multiplier, eta_ancestral, s_churn, ...) as one
per-request value. Each field is named as A1111's option and declares, beside its default (A1111's),
the PNG parameters field A1111 records it under and the range A1111's settings page allows; the
servers' options, the CLI's flags and `--from-png` are all derived from these declarations.

Where a setting applies and when A1111 records it is the k-diffusion samplers' rule
(sdrt.runtime.schedulers.kdiffusion.a1111_settings)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from sdrt.errors import GenerationError

#: The GenerationRequest field that holds the settings (errors name `sampler_settings.<option>`).
PARAM = "sampler_settings"
#: Dataclass-metadata keys of a setting's declaration.
LABEL, RANGE, HELP = "a1111_label", "a1111_range", "help"


def _setting(default: bool | float, label: str, help: str, low: float | None = None, high: float | None = None):
    """A setting's declaration: A1111's default, its PNG parameters label, what it does (the CLI's
    help), its settings page's range."""
    return field(default=default, metadata={LABEL: label, HELP: help, RANGE: (low, high)})


@dataclass(frozen=True)
class SamplerSettings:
    """A1111's sampler options for one request (modules/shared_options.py, "Sampler parameters")."""

    sgm_noise_multiplier: bool = _setting(
        False,
        "SGM noise multiplier",
        "text-to-image's initial noise times sqrt(1 + sigma0^2) instead of sigma0 (SDXL's reference code)",
    )
    eta_ancestral: float = _setting(
        1.0, "Eta", "the ancestral and SDE samplers' noise (DPM fast and adaptive's too): 0 none, 1 all", 0.0, 1.0
    )
    s_churn: float = _setting(0.0, "Sigma churn", "Euler, Heun and DPM2's churn (Karras et al.'s S_churn)", 0.0, 100.0)
    s_tmin: float = _setting(0.0, "Sigma tmin", "the lowest noise level the churn applies at", 0.0, 10.0)
    s_tmax: float = _setting(
        0.0, "Sigma tmax", "the highest noise level the churn applies at (0: no limit)", 0.0, 999.0
    )
    s_noise: float = _setting(
        1.0, "Sigma noise", "the churn's and the ancestral / SDE samplers' fresh noise scale (not Euler a's)", 0.0, 1.1
    )
    sigma_min: float = _setting(0.0, "Schedule min sigma", "the schedule's lowest level (0: the model's)", 0.0)
    sigma_max: float = _setting(0.0, "Schedule max sigma", "the schedule's highest level (0: the model's)", 0.0)
    rho: float = _setting(0.0, "Schedule rho", "Karras' and Polyexponential's rho (0: theirs, 7 and 1)", 0.0)
    use_old_karras_scheduler_sigmas: bool = _setting(
        False, "", "the schedules' range 0.1 to 10 instead of the model's (A1111 records nothing)"
    )
    beta_dist_alpha: float = _setting(0.6, "Beta schedule alpha", "the Beta schedule's alpha", 0.01, 1.0)
    beta_dist_beta: float = _setting(0.6, "Beta schedule beta", "the Beta schedule's beta", 0.01, 1.0)

    def options(self) -> dict[str, bool | float]:
        """The settings by A1111 option name (GET /sdapi/v1/options)."""
        return {item.name: getattr(self, item.name) for item in dataclasses.fields(self)}

    def problem(self) -> tuple[str, str] | None:
        """(the option at fault, why) for the first value A1111 would not accept, else None."""
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(item.default, bool):
                if not isinstance(value, bool):
                    return item.name, "must be true or false"
                continue
            low, high = item.metadata[RANGE]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                return item.name, "must be a finite number"
            if (low is not None and value < low) or (high is not None and value > high):
                span = f"from {low:g} to {high:g}" if high is not None else f"of at least {low:g}"
                return item.name, f"must be a number {span}"
        return None

    def check(self, where: str = PARAM) -> None:
        """GenerationError naming `where`.<option> for a value A1111 would not accept."""
        problem = self.problem()
        if problem is not None:
            name, why = problem
            raise GenerationError(f"{where}.{name} {why}, got {getattr(self, name)!r}", f"{where}.{name}")


#: Every setting's A1111 option name, in declaration order.
SETTING_NAMES = tuple(item.name for item in dataclasses.fields(SamplerSettings))
#: A1111's PNG parameters label -> the option it records (of the options A1111 records).
SETTING_LABELS = {
    item.metadata[LABEL]: item.name for item in dataclasses.fields(SamplerSettings) if item.metadata[LABEL]
}


def setting_field(name: str) -> dataclasses.Field:
    """The declaration of one setting (its default, label and range)."""
    return next(item for item in dataclasses.fields(SamplerSettings) if item.name == name)
