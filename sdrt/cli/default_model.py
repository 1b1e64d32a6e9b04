"""Which model a command uses when `--model` is not given: `$SDRT_MODEL`, else SD 1.5 from the
Hugging Face hub, exported once into the cache (~/.cache/sdrt/models, or $SDRT_CACHE/models) and
reused. `$SDRT_MODEL` may name an export folder, or anything `sdrt export` reads (a hub id, a
diffusers folder, a checkpoint), which is then exported once into the cache the same way."""

from __future__ import annotations

import os
from pathlib import Path

import click

from sdrt.errors import SdrtError
from sdrt.runtime.manifest import MANIFEST_NAME

MODEL_ENV = "SDRT_MODEL"
DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
#: What an SD 1.5 export needs (measured: docs/benchmarks, README).
SD15_EXPORT_NEEDS = "about 12.7 GiB of memory and 12 GB of disk"


def cached_export(source: str) -> Path:
    from sdrt.runtime.engines.ort_cache import cache_root

    return cache_root() / "models" / source.strip("/").replace("/", "--").replace("\\", "--")


def resolve_model(model_dir: str | None) -> str:
    """An export folder for the command: `model_dir`, `$SDRT_MODEL`, or the default."""
    if model_dir is not None:
        return model_dir
    source = os.environ.get(MODEL_ENV) or DEFAULT_MODEL
    if (Path(source) / MANIFEST_NAME).is_file():
        return source
    folder = cached_export(source)
    if (folder / MANIFEST_NAME).is_file():
        return str(folder)
    try:
        from sdrt.export.exporter import export_model
    except ImportError:
        raise SdrtError(
            f"no --model given and {source} is not exported yet; exporting it needs the export extra "
            f"(pip install 'sdrt[export]'), or pass --model DIR"
        ) from None
    where = "" if source != DEFAULT_MODEL else f" (the default; set ${MODEL_ENV} or pass --model to use another)"
    click.echo(
        f"no --model given: exporting {source}{where} once into {folder}; this needs {SD15_EXPORT_NEEDS}", err=True
    )
    try:
        export_model(source, folder, overwrite=folder.exists(), progress=lambda line: click.echo(line, err=True))
    except SdrtError as error:
        raise SdrtError(
            f"{error}. Point sdrt at a model: --model DIR (an export), ${MODEL_ENV}=DIR or hub id, or "
            "try the whole path offline with `sdrt export --random tiny --out DIR`"
        ) from None
    return str(folder)
