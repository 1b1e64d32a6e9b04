"""`sdrt generate`'s flags for A1111's sampler settings (sdrt.runtime.sampler_settings), one per
setting, derived from its declaration: a flag for a switch, a number in A1111's range otherwise."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import click

from sdrt.cli.types import FiniteFloat
from sdrt.runtime.sampler_settings import HELP, RANGE, SamplerSettings


def _flag(item: dataclasses.Field) -> str:
    return "--" + item.name.replace("_", "-")


def sampler_settings_options(command: Callable) -> Callable:
    for item in reversed(dataclasses.fields(SamplerSettings)):
        help_text = f"A1111's {item.name}: {item.metadata[HELP]}"
        if isinstance(item.default, bool):
            option = click.option(_flag(item), item.name, is_flag=True, help=help_text + ".")
        else:
            low, high = item.metadata[RANGE]
            option = click.option(
                _flag(item),
                item.name,
                default=item.default,
                type=FiniteFloat(low, high),
                help=f"{help_text} [default: {item.default:g}].",
            )
        command = option(command)
    return command


def sampler_settings(options: dict) -> SamplerSettings:
    """The settings from generate's options (popped)."""
    return SamplerSettings(**{item.name: options.pop(item.name) for item in dataclasses.fields(SamplerSettings)})
