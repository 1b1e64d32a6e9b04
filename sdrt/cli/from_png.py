"""`sdrt generate --from-png IMAGE.png` / `--parameters TEXT`: an A1111 parameters text read
back into generate's options, so the settings that made an image make it again. The text's
values become the options' defaults (what the command line gives still wins); each field that
is not applied is one line on stderr, saying why."""

from __future__ import annotations

import click

from sdrt.errors import ConfigError
from sdrt.runtime.imaging.png_info import PARAMETERS_KEY, parse_parameters, typed_parameters
from sdrt.runtime.sampler_settings import SETTING_LABELS, setting_field

#: A1111 field -> generate's option (the value as the option takes it).
FIELDS = {
    "Prompt": "prompt",
    "Negative prompt": "negative_prompt",
    "Steps": "steps",
    "CFG scale": "guidance",
    "Seed": "seed",
    "Denoising strength": "strength",
    "Variation seed": "subseed",
    "Variation seed strength": "subseed_strength",
    "ENSD": "eta_noise_seed_delta",
    "Clip skip": "clip_skip",
    "Emphasis": "emphasis",
    "Eta DDIM": "eta",
}
#: Fields that describe the image or the run without changing the pixels sdrt makes here.
DESCRIPTIVE = {
    "Model": "the model is --model's",
    "Model hash": "the model is --model's",
    "Batch size": "one image is made, with its own seed",
    "Batch pos": "one image is made, with its own seed",
    "Version": "",
    "VAE hash": "the VAE is --model's",
}


def _text(source: str, is_png: bool) -> str:
    if not is_png:
        return source
    from sdrt.runtime.imaging.inputs import open_image

    image = open_image(source)
    text = image.info.get(PARAMETERS_KEY)
    if not isinstance(text, str) or not text.strip():
        raise click.BadParameter(f"{source} has no A1111 'parameters' text", param_hint="--from-png")
    return text


def defaults_from_parameters(text: str) -> tuple[dict, list[str]]:
    """(generate's option defaults, one note per field not applied) of an A1111 parameters text."""
    from sdrt.runtime.schedulers import resolve_sampler_name
    from sdrt.runtime.schedulers.kdiffusion.schedules import k_schedule_entry

    fields = typed_parameters(parse_parameters(text))
    defaults: dict = {"num_images": 1}
    notes: list[str] = []
    rng = fields.pop("RNG", None)
    for key, value in fields.items():
        if key in FIELDS:
            defaults[FIELDS[key]] = value
        elif key == "Sampler":
            try:
                defaults["sampler"] = resolve_sampler_name(str(value))
            except ConfigError as error:
                notes.append(f"Sampler: {value}: {error}")
        elif key == "Schedule type":
            try:
                defaults["schedule"] = k_schedule_entry(str(value)).name
            except ConfigError as error:
                notes.append(f"Schedule type: {value}: {error}")
        elif key == "Size":
            width, _, height = str(value).partition("x")
            defaults["width"], defaults["height"] = int(width), int(height)
        elif key == "Discard penultimate sigma":  # A1111 writes it only when on
            defaults["discard_penultimate_sigma"] = str(value) == "True"
        elif key in SETTING_LABELS:  # A1111's sampler settings, recorded where they applied
            name = SETTING_LABELS[key]
            defaults[name] = str(value) == "True" if isinstance(setting_field(name).default, bool) else float(value)
        elif key == "Seed resize from":
            defaults["seed_resize_from"] = str(value)
        elif key in DESCRIPTIVE:
            if DESCRIPTIVE[key]:
                notes.append(f"{key}: {value}: not applied ({DESCRIPTIVE[key]})")
        else:
            notes.append(f"{key}: {value}: not supported by --from-png, ignored")
    # A1111 records RNG only where it is not its default, GPU.
    defaults["randn_source"] = str(rng) if rng is not None else "GPU"
    if "strength" in defaults:
        notes.append("Denoising strength: applied with --init-image only (the source image is not in the text)")
    return defaults, notes


def apply_parameters(ctx: click.Context, param: click.Parameter, value):
    """Eager callback of --from-png and --parameters: the text's values as the other options' defaults."""
    if value is None or ctx.resilient_parsing:
        return value
    defaults, notes = defaults_from_parameters(_text(value, param.name == "from_png"))
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    for note in notes:
        click.echo(f"note: {note}", err=True)
    return value


def from_png_options(command):
    options = [
        click.option(
            "--from-png",
            "from_png",
            default=None,
            is_eager=True,
            expose_value=False,
            callback=apply_parameters,
            metavar="IMAGE.png",
            help="Regenerate from an A1111 PNG's parameters (prompt, steps, sampler, schedule, CFG, seed, "
            "size, variation seed, ENSD, RNG, ...); options given here win.",
        ),
        click.option(
            "--parameters",
            "parameters_text",
            default=None,
            is_eager=True,
            expose_value=False,
            callback=apply_parameters,
            metavar="TEXT",
            help="As --from-png, from an A1111 parameters text.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command
