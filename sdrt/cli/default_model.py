"""Which model a command uses: `--model`, else `$SDRT_MODEL`, else the default model (a ready ONNX
export on the Hugging Face hub, fetched once without torch: hub_model.py). `--model` and
`$SDRT_MODEL` may name an export folder (sdrt's, or a diffusers ONNX folder), or anything `sdrt
export` reads (a diffusers folder, a .safetensors/.ckpt checkpoint, a hub id), which is exported
once into the cache (~/.cache/sdrt/models, or $SDRT_CACHE/models) and reused."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from sdrt.cli.hub_model import fetch_default
from sdrt.cli.progress import ComponentLines
from sdrt.errors import ModelFolderError, SdrtError
from sdrt.runtime.files.user_files import present
from sdrt.runtime.manifest import MANIFEST_NAME

MODEL_ENV = "SDRT_MODEL"
#: What `sdrt export` reads besides folders (sdrt.export.sources.CHECKPOINT_SUFFIXES, kept here so
#: that this check imports no export code).
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
#: The ONNX graph a diffusers ONNX folder (no manifest.json) holds for its UNet.
ONNX_UNET = Path("unet") / "model.onnx"
WHAT_MODEL_TAKES = "an export folder, a diffusers folder, a .safetensors/.ckpt checkpoint or a hub id"


def cached_export(source: str) -> Path:
    from sdrt.runtime.engines.ort_cache import cache_root

    return cache_root() / "models" / source.strip("/").replace("/", "--").replace("\\", "--")


def is_export(folder: Path) -> bool:
    """A folder the runtime loads as it is: an sdrt export, or a diffusers ONNX folder."""
    return present(folder / MANIFEST_NAME, ModelFolderError) or (
        present(folder / "model_index.json", ModelFolderError) and (folder / ONNX_UNET).is_file()
    )


def _is_hub_id(source: str) -> bool:
    return source.count("/") == 1 and not source.startswith((".", "/", "~")) and not Path(source).suffix


def _check_source(source: str, named: str) -> str:
    """`source` as `sdrt export` should read it (a local path made absolute, so that the cache
    entry does not depend on the working folder), or a one-line error naming the fix."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not present(path / "model_index.json", ModelFolderError):
            raise ModelFolderError(
                f"{named} {source} is not a model folder (no {MANIFEST_NAME} or model_index.json); "
                f"pass {WHAT_MODEL_TAKES}"
            )
        return str(path.resolve())
    if path.is_file():
        if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise ModelFolderError(f"{named} {source} is not a model: pass {WHAT_MODEL_TAKES}")
        return str(path.resolve())
    if not _is_hub_id(source):
        raise ModelFolderError(
            f"{named} {source} does not exist: pass {WHAT_MODEL_TAKES}, "
            "or make an export with `sdrt export MODEL --out DIR`"
        )
    return source


def _say(line: str) -> None:
    click.echo(line, err=True)


def resolve_model(model_dir: str | None, quiet: bool = False) -> str:
    """An export folder for the command, from `model_dir`, `$SDRT_MODEL` or the default, exported
    into the cache first when it is not one (one line says so; `quiet` hides the export's own)."""
    if model_dir is not None:
        source, named = model_dir, "--model"
    elif os.environ.get(MODEL_ENV):
        source, named = os.environ[MODEL_ENV], f"${MODEL_ENV}"
    else:
        return str(fetch_default(_say, progress=not quiet and sys.stderr.isatty()))
    if is_export(Path(source).expanduser()):
        return source
    source = _check_source(source, named)
    folder = cached_export(source)
    if (folder / MANIFEST_NAME).is_file():
        return str(folder)
    try:
        from sdrt.export.exporter import export_model
        from sdrt.export.quiet import quiet_libraries
    except ImportError:
        raise SdrtError(
            f"{named} {source} is not exported yet; exporting it needs the export extra "
            f"(pip install 'sdrt[export]'), or pass --model DIR with an export"
        ) from None
    _say(f"exporting {named} {source} once into {folder}")
    quiet_libraries()
    lines = ComponentLines()
    try:
        export_model(source, folder, overwrite=folder.exists(), progress=(lambda line: None) if quiet else lines)
    except SdrtError as error:
        raise SdrtError(
            f"{error}. Point sdrt at a model: --model DIR (an export), ${MODEL_ENV}=DIR or hub id, or "
            "try the whole path offline with `sdrt export --random tiny --out DIR`"
        ) from None
    finally:
        lines.flush()
    return str(folder)
