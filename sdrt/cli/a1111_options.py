"""`sdrt generate`'s A1111 options: img2img_fix_steps, and the noise settings A1111 records
(variation seed, seed resize, ENSD, randn_source), each read back by GenerationRequest."""

from __future__ import annotations

from collections.abc import Callable

import click


def a1111_options(command: Callable) -> Callable:
    options = [
        click.option(
            "--img2img-fix-steps",
            "img2img_fix_steps",
            is_flag=True,
            help="From an image with a k-diffusion sampler: run all --steps (A1111's img2img_fix_steps: of a "
            "schedule of steps / strength) [default: int(strength * steps) + 1 of --steps' schedule].",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command
