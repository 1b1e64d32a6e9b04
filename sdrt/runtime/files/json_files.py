"""The one reader of a model folder's JSON files (manifest, configs, tokenizer files): a size
limit, UTF-8, strict JSON (no NaN or Infinity), a bounded nesting depth and the expected
top-level type, each failure one ModelFolderError naming the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sdrt.errors import ModelFolderError
from sdrt.runtime.files.user_files import MAX_JSON_BYTES, read_regular_text

#: No config or tokenizer file of a model folder is near this (CLIP's tokenizer.json: 3.6 MB).
MAX_CONFIG_BYTES = MAX_JSON_BYTES
ADVICE = "re-export the model"


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def read_json(path: Path, *, kind: type = dict, max_bytes: int = MAX_CONFIG_BYTES, advice: str = ADVICE) -> Any:
    """The JSON value of `path` (a regular file: a FIFO or a device is refused at once),
    checked to be a `kind`."""
    try:
        text = read_regular_text(path, max_bytes, ModelFolderError)
    except ModelFolderError as error:
        raise ModelFolderError(f"{error}; {advice}") from None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as error:
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error).splitlines()[0]
        raise ModelFolderError(f"cannot read {path} as JSON ({reason}); {advice}") from None
    if not isinstance(value, kind):
        raise ModelFolderError(f"{path} must hold a JSON {kind.__name__}, not {type(value).__name__}; {advice}")
    return value
