"""`sdrt generate`'s Stable Diffusion 3 options: skip-layer guidance (diffusers' names and
defaults), the T5 switch and T5's length."""

from __future__ import annotations

from collections.abc import Callable

import click

from sdrt.cli.types import FiniteFloat, with_options
from sdrt.runtime.features.skip_layers import DEFAULT_SCALE, DEFAULT_START, DEFAULT_STOP, SkipLayerGuidance

SETTINGS = ("skip_layers", "skip_layer_scale", "skip_layer_start", "skip_layer_stop")


class Layers(click.ParamType):
    """Layer indices written 7,8,9."""

    name = "layers"

    def convert(self, value, param, ctx) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        try:
            return tuple(int(part) for part in str(value).split(","))
        except ValueError:
            self.fail(f"expected layer indices as whole numbers like 7,8,9, got {value!r}", param, ctx)


def sd3_options(command: Callable) -> Callable:
    """Adds --skip-layers (with --skip-layer-scale, -start, -stop), --t5/--no-t5 and
    --max-sequence-length to a command."""
    fraction = FiniteFloat(0, 1)
    options = [
        click.option(
            "--skip-layers",
            "skip_layers",
            default=None,
            type=Layers(),
            metavar="7,8,9",
            help="SD3: skip-layer guidance on these transformer layers (SD3.5 Medium's: 7,8,9).",
        ),
        click.option("--skip-layer-scale", default=None, type=FiniteFloat(), help=f"[default: {DEFAULT_SCALE}]"),
        click.option(
            "--skip-layer-start",
            default=None,
            type=fraction,
            help=f"The fraction of the steps it starts after [default: {DEFAULT_START}].",
        ),
        click.option(
            "--skip-layer-stop",
            default=None,
            type=fraction,
            help=f"The fraction of the steps it stops before [default: {DEFAULT_STOP}].",
        ),
        click.option(
            "--t5/--no-t5",
            "t5",
            default=None,
            help="SD3: with or without T5 (without: zeros in its place, as diffusers) [default: as exported].",
        ),
        click.option(
            "--max-sequence-length",
            "max_sequence_length",
            default=None,
            type=int,
            help="SD3: T5's token length, 1 to the export's [default: the export's, 256].",
        ),
    ]
    return with_options(command, options)


def skip_layer_guidance(settings: dict) -> SkipLayerGuidance | None:
    """The skip-layer guidance the options ask for (popped from `settings`)."""
    layers, scale, start, stop = (settings.pop(name) for name in SETTINGS)
    if layers is None:
        if (scale, start, stop) != (None, None, None):
            raise click.UsageError("--skip-layer-scale, --skip-layer-start and --skip-layer-stop need --skip-layers")
        return None
    chosen = {"scale": scale, "start": start, "stop": stop}
    return SkipLayerGuidance(layers, **{name: value for name, value in chosen.items() if value is not None})
