"""manifest.json against its JSON Schema (one line naming where it is malformed), and the paths a
manifest names kept inside its folder."""

from __future__ import annotations

import functools
import json
from pathlib import Path, PurePosixPath, PureWindowsPath

from sdrt.errors import ModelFolderError

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
