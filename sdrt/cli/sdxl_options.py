"""`sdrt generate`'s SDXL options: the refiner and the size conditioning (diffusers' names)."""

from __future__ import annotations

from collections.abc import Callable

import click

from sdrt.cli.types import FiniteFloat, with_options
from sdrt.runtime.families.sdxl import AESTHETIC_SCORE, NEGATIVE_AESTHETIC_SCORE, SizeConditioning

#: diffusers' documented hand-off for the ensemble of experts (and A1111's refiner_switch_at default).
DEFAULT_REFINER_SWITCH = 0.8
PAIRS = (
    "original_size",
    "crop_top_left",
    "target_size",
    "negative_original_size",
    "negative_crop_top_left",
    "negative_target_size",
)
SCORES = {"aesthetic_score": AESTHETIC_SCORE, "negative_aesthetic_score": NEGATIVE_AESTHETIC_SCORE}


class Pair(click.ParamType):
    """Two non-negative integers written A,B (height,width or top,left)."""

    name = "pair"

    def convert(self, value, param, ctx) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        parts = str(value).replace("x", ",").split(",")
        try:
            first, second = (int(part) for part in parts)
        except ValueError:
            self.fail(f"expected two whole numbers as A,B, got {value!r}", param, ctx)
        if first < 0 or second < 0:
            self.fail(f"must not be negative, got {value!r}", param, ctx)
        return first, second


def sdxl_options(command: Callable) -> Callable:
    """Adds --refiner, --refiner-switch and the size-conditioning options to a command."""
    options = [
        click.option("--refiner", default=None, type=click.Path(), help="SDXL refiner folder (ensemble of experts)."),
        click.option(
            "--refiner-switch",
            default=None,
            type=FiniteFloat(0, 1, low_open=True),
            help=f"With --refiner: the fraction of the schedule the base runs, in (0, 1) "
            f"[default: {DEFAULT_REFINER_SWITCH}].",
        ),
    ]
    for name in PAIRS:
        what = "TOP,LEFT" if "crop" in name else "HEIGHT,WIDTH"
        options.append(
            click.option(
                f"--{name.replace('_', '-')}",
                name,
                default=None,
                type=Pair(),
                metavar=what,
                help=f"SDXL size conditioning: {name.replace('_', ' ')}.",
            )
        )
    for name, default in SCORES.items():
        options.append(
            click.option(
                f"--{name.replace('_', '-')}",
                name,
                default=None,
                type=FiniteFloat(),
                help=f"SDXL refiner conditioning [default: {default:g}].",
            )
        )
    return with_options(command, options)


def size_conditioning(settings: dict) -> SizeConditioning | None:
    """The SizeConditioning the options ask for (popped from `settings`), None if none is given."""
    given = {name: settings.pop(name) for name in (*PAIRS, *SCORES)}
    given = {name: value for name, value in given.items() if value is not None}
    return SizeConditioning(**given) if given else None


def resolve_refiner_switch(refiner: str | None, switch: float | None) -> float | None:
    if switch is not None and refiner is None:
        raise click.UsageError("--refiner-switch needs --refiner")
    if refiner is not None and switch is not None and switch >= 1:
        raise click.UsageError(f"--refiner-switch must be below 1, got {switch:g}")
    return None if refiner is None else DEFAULT_REFINER_SWITCH if switch is None else switch
