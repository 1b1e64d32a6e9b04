"""ControlNet options of `sdrt generate` (per request) and `sdrt serve` (the folder of them)."""

from __future__ import annotations

from collections.abc import Callable

import click

from sdrt.cli.types import FiniteFloat, with_options
from sdrt.errors import SdrtError
from sdrt.runtime.features.controlnet.preprocess import PREPROCESSORS
from sdrt.runtime.features.controlnet.units import CONTROL_MODES, ControlUnit

#: Options given once apply to every ControlNet; given once per ControlNet, to each in order.
PER_UNIT = {
    "control_starts": ("--control-start", "start"),
    "control_ends": ("--control-end", "end"),
    "control_modes": ("--control-mode", "mode"),
    "preprocessors": ("--preprocessor", "preprocessor"),
}


def controlnet_dir_option(command: Callable) -> Callable:
    return click.option(
        "--controlnet-dir",
        default=None,
        type=click.Path(file_okay=False),
        help="A folder of exported ControlNets that requests name (by folder name).",
    )(command)


def controlnet_options(command: Callable) -> Callable:
    options = [
        click.option(
            "--controlnet",
            "controlnets",
            multiple=True,
            metavar="DIR[:SCALE]",
            help="Guide with this exported ControlNet (a folder, or a name in --controlnet-dir) at SCALE "
            "[default: 1]; repeatable, one --control-image each.",
        ),
        click.option(
            "--control-image",
            "control_images",
            multiple=True,
            metavar="IMAGE",
            help="The control image of each --controlnet, in order.",
        ),
        click.option(
            "--control-start",
            "control_starts",
            multiple=True,
            type=FiniteFloat(0, 1),
            help="Fraction of the steps where the ControlNet starts guiding [default: 0].",
        ),
        click.option(
            "--control-end",
            "control_ends",
            multiple=True,
            type=FiniteFloat(0, 1),
            help="Fraction of the steps where it stops [default: 1].",
        ),
        click.option(
            "--control-mode",
            "control_modes",
            multiple=True,
            type=click.Choice(list(CONTROL_MODES)),
            help="balanced, prompt (My prompt is more important) or controlnet (ControlNet is more "
            "important: diffusers' guess mode) [default: balanced].",
        ),
        click.option(
            "--preprocessor",
            "preprocessors",
            multiple=True,
            type=click.Choice(PREPROCESSORS),
            help="Make the control map from the image: none, invert or canny [default: none].",
        ),
        click.option(
            "--canny-thresholds",
            default="100,200",
            show_default=True,
            metavar="LOW,HIGH",
            help="The canny preprocessor's hysteresis thresholds.",
        ),
        controlnet_dir_option,
    ]
    return with_options(command, options)


def control_units(
    controlnets: tuple[str, ...], control_images: tuple[str, ...], canny_thresholds: str, **per_unit
) -> list[ControlUnit]:
    """The request's ControlNets from the options; a mismatch in counts is one SdrtError."""
    if len(control_images) != len(controlnets):
        raise SdrtError(
            f"--controlnet is given {len(controlnets)} time(s) and --control-image "
            f"{len(control_images)}: give one control image per ControlNet"
        )
    try:
        low, high = (float(part) for part in canny_thresholds.split(","))
    except ValueError:
        raise SdrtError(f"--canny-thresholds must be LOW,HIGH (two numbers), got {canny_thresholds!r}") from None
    settings: list[dict] = [{"low_threshold": low, "high_threshold": high} for _ in controlnets]
    for key, (option, field) in PER_UNIT.items():
        values = per_unit.get(key) or ()
        if not values:
            continue
        if len(values) not in (1, len(controlnets)):
            raise SdrtError(
                f"{option} is given {len(values)} times for {len(controlnets)} ControlNet(s): give it "
                "once for all, or once per --controlnet"
            )
        for index, unit in enumerate(settings):
            unit[field] = values[0] if len(values) == 1 else values[index]
    return [ControlUnit.parse(text, image, **unit) for text, image, unit in zip(controlnets, control_images, settings)]
