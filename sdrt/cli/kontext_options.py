"""`sdrt generate`'s FLUX.1 Kontext options: FluxKontextPipeline's automatic sizes
(sdrt.runtime.families.flux_kontext_sizes)."""

from __future__ import annotations

from collections.abc import Callable

import click

from sdrt.cli.types import with_options

SETTINGS = ("kontext_auto_resize", "kontext_max_area")


def kontext_options(command: Callable) -> Callable:
    """Adds --kontext-resize/--no-kontext-resize and --kontext-max-area to a command."""
    options = [
        click.option(
            "--kontext-resize/--no-kontext-resize",
            "kontext_auto_resize",
            default=None,
            help="FLUX.1 Kontext: the reference image resized to the preferred resolution nearest its aspect "
            "ratio, as diffusers [default: on; off: its own size].",
        ),
        click.option(
            "--kontext-max-area",
            "kontext_max_area",
            default=None,
            type=click.IntRange(min=1),
            help="FLUX.1 Kontext: the output's area in pixels at the requested aspect ratio [default: 1024*1024].",
        ),
    ]
    return with_options(command, options)


def kontext_settings(settings: dict) -> dict:
    """The request fields of the options (popped from `settings`)."""
    return {name: settings.pop(name) for name in SETTINGS}
