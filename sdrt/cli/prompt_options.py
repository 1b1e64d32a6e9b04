"""Options of the commands that read prompts: A1111's prompt language settings."""

from __future__ import annotations

from collections.abc import Callable

import click

from sdrt.cli.types import with_options
from sdrt.runtime.engines import DEFAULT_LORA_CACHE_MB
from sdrt.runtime.request import MAX_CLIP_SKIP
from sdrt.runtime.text.prompts.emphasis import DEFAULT_EMPHASIS, EMPHASIS_MODES


def prompt_options(command: Callable) -> Callable:
    """Adds --emphasis, --clip-skip and --plain-prompt to a command."""
    options = [
        click.option(
            "--emphasis",
            default=DEFAULT_EMPHASIS,
            show_default=True,
            type=click.Choice(list(EMPHASIS_MODES)),
            help="A1111's emphasis mode for (text:1.2) and [text]; None reads brackets and BREAK as text.",
        ),
        click.option(
            "--clip-skip",
            default=1,
            show_default=True,
            type=click.IntRange(1, MAX_CLIP_SKIP),
            help="A1111's clip skip: condition on the N-th text encoder layer from the end (SD 1.x).",
        ),
        click.option(
            "--plain-prompt",
            is_flag=True,
            help="Read prompts as plain text: no emphasis, BREAK, [from:to:when] or [a|b].",
        ),
    ]
    return with_options(command, options)


def embedding_options(command: Callable) -> Callable:
    """Adds --embeddings DIR and --embedding PATH[:TOKEN] (load-time; both repeatable)."""
    options = [
        click.option(
            "--embeddings",
            "embedding_dirs",
            multiple=True,
            type=click.Path(file_okay=False),
            help="A folder of textual-inversion embeddings (a file's stem is its trigger word).",
        ),
        click.option(
            "--embedding",
            "embedding_files",
            multiple=True,
            metavar="PATH[:TOKEN]",
            help="A textual-inversion embedding file, with its trigger word [default: the file's stem].",
        ),
    ]
    return with_options(command, options)


def embedding_sources(dirs: tuple[str, ...], files: tuple[str, ...]) -> list[str]:
    return [*dirs, *files]


def lora_options(command: Callable, per_request: bool = True) -> Callable:
    """Adds --lora-dir DIR and --lora-cache-mb (load-time), and with `per_request` --lora
    PATH[:WEIGHT] (repeatable)."""
    options = [
        click.option(
            "--lora-dir",
            default=None,
            type=click.Path(file_okay=False),
            help="A folder of LoRAs that <lora:NAME:WEIGHT> tags in prompts name (by file stem).",
        ),
        click.option(
            "--lora-cache-mb",
            default=DEFAULT_LORA_CACHE_MB,
            show_default=True,
            type=click.IntRange(1),
            help="Memory for LoRA-merged ONNX Runtime sessions, per component.",
        ),
    ]
    if per_request:
        options.insert(
            0,
            click.option(
                "--lora",
                "loras",
                multiple=True,
                metavar="PATH[:WEIGHT]",
                help="Merge this LoRA (a file, or a name in --lora-dir) with WEIGHT [default: 1]; repeatable.",
            ),
        )
    return with_options(command, options)


def serve_lora_options(command: Callable) -> Callable:
    return lora_options(command, per_request=False)
