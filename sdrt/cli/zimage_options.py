"""`sdrt generate`'s Z-Image options: ZImagePipeline's CFG truncation and normalization."""

from __future__ import annotations

from collections.abc import Callable

import click

from sdrt.cli.types import FiniteFloat, with_options

SETTINGS = ("cfg_truncation", "cfg_normalization")


def zimage_options(command: Callable) -> Callable:
    """Adds --cfg-truncation and --cfg-normalization to a command."""
    options = [
        click.option(
            "--cfg-truncation",
            "cfg_truncation",
            default=None,
            type=FiniteFloat(0),
            help="Z-Image: no CFG on the steps whose time (1000 - t) / 1000 is above this [default: 1, none].",
        ),
        click.option(
            "--cfg-normalization",
            "cfg_normalization",
            default=None,
            type=FiniteFloat(0),
            help="Z-Image: cap the guided prediction's norm at this times the conditional one's [default: off].",
        ),
    ]
    return with_options(command, options)


def zimage_settings(settings: dict) -> dict:
    """The request fields of the options (popped from `settings`)."""
    return {name: settings.pop(name) for name in SETTINGS}
