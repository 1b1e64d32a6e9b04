"""`sdrt generate`'s A1111 options: img2img_fix_steps, and the noise settings A1111 records
(variation seed, seed resize, ENSD, randn_source), each read back by GenerationRequest."""

from __future__ import annotations

from collections.abc import Callable

import click

from sdrt.cli.types import FiniteFloat


class PixelSize(click.ParamType):
    """WIDTHxHEIGHT in pixels."""

    name = "WxH"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        width, sep, height = str(value).lower().partition("x")
        if not sep or not width.isdigit() or not height.isdigit() or int(width) < 1 or int(height) < 1:
            self.fail(f"{value!r} is not WIDTHxHEIGHT (e.g. 512x768)", param, ctx)
        return int(width), int(height)


def a1111_options(command: Callable) -> Callable:
    options = [
        click.option(
            "--img2img-fix-steps",
            "img2img_fix_steps",
            is_flag=True,
            help="From an image with a k-diffusion sampler: run all --steps (A1111's img2img_fix_steps: of a "
            "schedule of steps / strength) [default: int(strength * steps) + 1 of --steps' schedule].",
        ),
        click.option(
            "--discard-penultimate-sigma",
            "discard_penultimate_sigma",
            is_flag=True,
            help="A1111's always_discard_next_to_last_sigma: its samplers lay out one step more and drop the "
            "next-to-last noise level (DPM2, DPM2 a and DPM++ 3M SDE always do).",
        ),
        click.option(
            "--subseed",
            default=None,
            type=click.IntRange(0),
            help="A1111's variation seed (image k gets SUBSEED + k; every image keeps --seed) [default: drawn].",
        ),
        click.option(
            "--subseed-strength",
            default=0.0,
            type=FiniteFloat(0, 1),
            help="How far the noise moves toward the variation seed's (A1111's slerp), 0 to 1 [default: 0].",
        ),
        click.option(
            "--seed-resize-from",
            default=None,
            type=PixelSize(),
            help="A1111's seed resize: the noise of this WIDTHxHEIGHT, centred in this size's.",
        ),
        click.option(
            "--ensd",
            "eta_noise_seed_delta",
            default=0,
            type=click.IntRange(0),
            help="A1111's eta noise seed delta: the sampler's fresh noise from seed + ENSD [default: 0].",
        ),
        click.option(
            "--randn-source",
            default=None,
            type=click.Choice(["CPU", "GPU", "NV"]),
            help="A1111's noise source: torch's CPU generator, or its CUDA Philox one emulated (GPU, NV; "
            "unverified on a GPU) [default: CPU].",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def a1111_noise_settings(options: dict, sampler: str, seed: int, count: int):
    """(the images' seeds, A1111Noise or None) from the options (popped): A1111's rule with a
    variation strength is one seed for all images and variation seeds counting up. The k-diffusion
    samplers always get settings, so their PNGs record the RNG."""
    from sdrt.runtime.a1111_noise import CPU, A1111Noise
    from sdrt.runtime.schedulers import K_SAMPLER_NAMES
    from sdrt.runtime.seeds import consecutive_seeds, draw_seed

    subseed, strength = options.pop("subseed"), options.pop("subseed_strength")
    resize, delta, source = (
        options.pop("seed_resize_from"),
        options.pop("eta_noise_seed_delta"),
        options.pop("randn_source"),
    )
    seeds = consecutive_seeds(seed, count)
    subseeds: tuple[int, ...] = ()
    if strength:
        seeds = [seed] * count
        subseeds = tuple(consecutive_seeds(draw_seed() if subseed is None else subseed, count))
    noise = A1111Noise(subseeds, strength, resize, delta, source or CPU)
    if noise == A1111Noise() and source is None and sampler not in K_SAMPLER_NAMES:
        return seeds, None
    return seeds, noise
