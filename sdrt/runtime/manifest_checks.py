"""manifest.json against its JSON Schema (one line naming where it is malformed), what a schema
cannot say of a loaded manifest, and the paths a manifest names kept inside its folder."""

from __future__ import annotations

import functools
import json
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING

from sdrt.errors import ModelFolderError

if TYPE_CHECKING:
    from sdrt.runtime.manifest import Manifest

SCHEMA_PATH = Path(__file__).with_name("manifest.schema.json")
MAX_MESSAGE_CHARS = 200  # of a schema error's text (it can quote a huge value)


def _check_schema(data, path: Path) -> None:
    import jsonschema

    error = jsonschema.exceptions.best_match(_validator().iter_errors(data))
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "the top level"
        message = (
            error.message if len(error.message) <= MAX_MESSAGE_CHARS else error.message[:MAX_MESSAGE_CHARS] + "..."
        )
        raise ModelFolderError(f"{path} is malformed at {where}: {message}; re-export the model")


@functools.lru_cache(maxsize=1)
def _validator():
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema)


def confined_path(folder: Path, relative: str, what: str) -> Path:
    """`folder / relative`, refused unless `relative` is a relative path that stays inside the
    folder (no absolute path, no `..`). Checked lexically: a folder may use symbolic links."""
    parts = PurePosixPath(relative).parts
    if (
        not relative
        or PurePosixPath(relative).is_absolute()
        or PureWindowsPath(relative).drive
        or ".." in parts
        or "\\" in relative
    ):
        raise ModelFolderError(f"{what} is {relative!r}, which is not a path inside the model folder")
    return Path(folder, *parts)


def check_manifest(manifest: Manifest, path: Path) -> None:
    """What the schema cannot say: ranges in order, the family's own rules, text encoders and
    tokenizers present, named sizes defined and every file inside the folder; `path` names the
    manifest in messages."""
    from sdrt.runtime.manifest import TINY_VAE_DECODER  # manifest.py imports this module

    for name, dim in manifest.dims.items():
        if not dim.min <= dim.opt <= dim.max:
            raise ModelFolderError(
                f"{path}: dims.{name} needs min <= opt <= max, got {dim.min}, {dim.opt}, {dim.max}; re-export the model"
            )
    problem = manifest.model_family.check_manifest(manifest)
    if problem is not None:
        raise ModelFolderError(f"{path}: {problem}; re-export the model")
    for component, tokenizer in manifest.text_encoders:
        if component not in manifest.components:
            raise ModelFolderError(
                f"{path}: the text encoder {component!r} is not among the components; re-export the model"
            )
        confined_path(path.parent, tokenizer, f"{path}: tokenizer")
    encoders = [component for component, _ in manifest.text_encoders]
    for component in manifest.token_table_rows:
        if component not in encoders:
            raise ModelFolderError(
                f"{path}: token_table_rows names {component!r}, which is not one of the text "
                f"encoders ({', '.join(encoders)}); re-export the model"
            )
    if (manifest.tiny_vae is None) == (TINY_VAE_DECODER in manifest.components):
        raise ModelFolderError(f"{path}: tiny_vae and the {TINY_VAE_DECODER} component disagree; re-export the model")
    if manifest.tiny_vae is not None and manifest.tiny_vae.scaling_factor == 0:
        raise ModelFolderError(f"{path}: tiny_vae.scaling_factor must not be 0; re-export the model")
    for component, spec in manifest.components.items():
        named = [("file", spec.file), *(("data_files", name) for name in spec.data_files)]
        for key, relative in named + ([("weights_map", spec.weights_map)] if spec.weights_map else []):
            confined_path(path.parent, relative, f"{path}: components.{component}.{key}")
        if spec.weights_map and spec.weights_map not in spec.data_files:
            raise ModelFolderError(
                f"{path}: components.{component}.weights_map is not among its data_files "
                "(so nothing checks it); re-export the model"
            )
        for tensor in (*spec.inputs, *spec.outputs):
            for size in tensor.shape:
                if isinstance(size, str) and size not in manifest.dims:
                    raise ModelFolderError(
                        f"{path}: {component}.{tensor.name} has size {size!r}, which dims "
                        "does not define; re-export the model"
                    )
