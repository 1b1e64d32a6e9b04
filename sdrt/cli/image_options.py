"""`sdrt generate`'s hires fix (A1111's second pass at a larger size) and A1111's mask handling
for inpainting (blur, invert, only-masked area, fill, paste-back)."""

from __future__ import annotations

from collections.abc import Callable

import click

from sdrt.cli.types import FiniteFloat, with_options
from sdrt.runtime.features.deepcache import DeepCache
from sdrt.runtime.features.hires import (
    DEFAULT_STRENGTH,
    DEFAULT_UPSCALER,
    MAX_SCALE,
    UPSCALERS,
    HiresFix,
    upscaler_named,
)
from sdrt.runtime.features.inpaint_area import MASK_FILLS, MaskOptions
from sdrt.runtime.features.step_caches import CACHES, parse_cache


class DeepCacheOption(click.ParamType):
    name = "INTERVAL[:BRANCH]"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, DeepCache):
            return value
        try:
            return DeepCache.parse(value)
        except ValueError as error:
            self.fail(str(error), param, ctx)


DEEPCACHE = click.option(
    "--deepcache",
    default=None,
    type=DeepCacheOption(),
    metavar="INTERVAL[:BRANCH]",
    help="DeepCache: the full UNet every INTERVAL steps, its shallow branch between (an export "
    "made with --deepcache; branch 0).",
)


class CacheOption(click.ParamType):
    name = "NAME[:SETTINGS]"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, tuple(CACHES.values())):
            return value
        try:
            return parse_cache(value)
        except ValueError as error:
            self.fail(str(error), param, ctx)


STEP_CACHE = click.option(
    "--cache",
    "step_cache",
    default=None,
    type=CacheOption(),
    metavar="NAME[:SETTINGS]",
    help="A transformer step cache: first-block:THRESHOLD (an export made with --cache-graphs) or "
    "taylorseer:KEY=VALUE,... (TaylorSeerCacheConfig's fields, lite mode). docs/step-caches.md.",
)

HIRES = ("hires", "hires_upscaler", "hires_steps", "hires_strength", "hires_prompt")
MASK = ("mask_blur", "invert_mask", "inpaint_area", "mask_padding", "mask_fill", "paste_back")
INPAINT_AREAS = ("whole", "masked")


def image_options(command: Callable) -> Callable:
    options = [
        DEEPCACHE,
        STEP_CACHE,
        click.option(
            "--style",
            "styles",
            multiple=True,
            metavar="NAME",
            help="Apply this A1111 style of --styles (repeatable, in order).",
        ),
        click.option(
            "--styles",
            "styles_file",
            default=None,
            type=click.Path(dir_okay=False, exists=True),
            help="A1111's styles.csv (name, prompt, negative_prompt).",
        ),
        click.option(
            "--eta",
            default=None,
            type=FiniteFloat(0, 1),
            help="For --sampler ddim (its variance noise) and tcd (its gamma): from 0 (deterministic) to 1 "
            "[default: 0, as diffusers; the TCD authors suggest 0.3, A1111 clients send 1 for DDIM].",
        ),
        click.option(
            "--hires",
            default=None,
            type=FiniteFloat(1, MAX_SCALE),
            metavar="SCALE",
            help="Hires fix: a second image-to-image pass at SCALE times the size (A1111's).",
        ),
        click.option(
            "--hires-upscaler",
            default=DEFAULT_UPSCALER,
            show_default=True,
            metavar="NAME",
            help=f"With --hires: {', '.join(UPSCALERS)}.",
        ),
        click.option(
            "--hires-steps",
            default=0,
            show_default=True,
            type=click.IntRange(min=0),
            help="With --hires: steps of the second pass (0: as many as the first).",
        ),
        click.option(
            "--hires-strength",
            default=DEFAULT_STRENGTH,
            show_default=True,
            type=FiniteFloat(0, 1, low_open=True),
            help="With --hires: the second pass's denoising strength.",
        ),
        click.option("--hires-prompt", default=None, help="With --hires: another prompt for the second pass."),
        click.option(
            "--mask-blur",
            default=0,
            show_default=True,
            type=click.IntRange(0, 64),
            help="Inpainting: blur the mask by this many pixels (A1111's mask blur).",
        ),
        click.option("--invert-mask", is_flag=True, help="Inpainting: repaint the mask's black part instead."),
        click.option(
            "--inpaint-area",
            default="whole",
            show_default=True,
            type=click.Choice(INPAINT_AREAS),
            help="Inpainting: 'masked' crops to the mask, inpaints at the full size and pastes it back.",
        ),
        click.option(
            "--mask-padding",
            default=0,
            show_default=True,
            type=click.IntRange(min=0),
            help="With --inpaint-area masked: pixels around the mask to include.",
        ),
        click.option(
            "--mask-fill",
            default="original",
            show_default=True,
            type=click.Choice(MASK_FILLS),
            help="Inpainting: start the masked area from the original, or fill it from its surroundings.",
        ),
        click.option(
            "--paste-back",
            is_flag=True,
            help="Inpainting: keep every unmasked pixel of the original (A1111 does; diffusers does not).",
        ),
    ]
    return with_options(command, options)


def hires_fix(settings: dict) -> HiresFix | None:
    """The HiresFix the options ask for (popped from `settings`)."""
    scale, upscaler, steps, strength, prompt = (settings.pop(name) for name in HIRES)
    if scale is None:
        return None
    try:
        upscaler = upscaler_named(upscaler)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    return HiresFix(scale=scale, upscaler=upscaler, steps=steps, strength=strength, prompt=prompt)


def mask_options(settings: dict) -> MaskOptions | None:
    """The MaskOptions the options ask for (popped from `settings`); None keeps diffusers' inpainting."""
    blur, invert, area, padding, fill, paste_back = (settings.pop(name) for name in MASK)
    options = MaskOptions(
        invert=invert,
        blur_x=blur,
        blur_y=blur,
        fill=fill,
        only_masked=area == "masked",
        padding=padding,
        paste_back=paste_back,
    )
    return None if options == MaskOptions() else options


def styled(prompt: str, negative: str | None, settings: dict) -> tuple[str, str | None]:
    """The prompt and negative prompt with the --style styles applied (popped from `settings`)."""
    from sdrt.runtime.text.prompts.styles import apply_styles, load_styles

    names, path = settings.pop("styles"), settings.pop("styles_file")
    if not names:
        return prompt, negative
    if path is None:
        raise click.UsageError("--style needs --styles FILE (A1111's styles.csv)")
    prompt, styled_negative = apply_styles(prompt, negative or "", names, load_styles(path), "--style")
    return prompt, styled_negative or None
