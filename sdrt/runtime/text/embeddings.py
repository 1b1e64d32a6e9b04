"""Textual-inversion embeddings: new token vectors for the text encoders, loaded at model load.

Files, as A1111 and diffusers write them (the trigger word is the file's stem, as in A1111,
unless given as PATH:TOKEN):
- A1111 `.safetensors` (`emb_params`) and `.pt` (`string_to_param`, one entry);
- diffusers (`{token: vectors}`, one entry; `learned_embeds.bin` or `.safetensors`);
- SDXL (`clip_l` and `clip_g`, one set of vectors per text encoder).
`.pt`/`.bin` files are read by sdrt.runtime.files.torch_files, which rebuilds tensors and nothing else.

The vectors extend each text encoder's token table: the export takes them as extra rows
(`extra_token_embeddings`), addressed by ids from the table's size on, in load order. A prompt
uses an embedding where the tokens of its trigger word appear (A1111's rule, so emphasis and
chunking apply to it); a word that is no loaded trigger stays text.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sdrt.errors import SdrtError
from sdrt.runtime.files.safetensors_files import SafetensorsError, read_safetensors
from sdrt.runtime.files.torch_files import TorchFileError, load_torch_file
from sdrt.runtime.files.user_files import MAX_EMBEDDING_BYTES, is_regular, read_regular

SUFFIXES = (".safetensors", ".pt", ".bin")
#: SDXL files: the vectors of each text encoder, by the width it takes.
SDXL_KEYS = {"clip_l": "text_encoder", "clip_g": "text_encoder_2"}
A1111_SAFETENSORS_KEY = "emb_params"
SHORT_HASH = 12  # hex digits of the sha256 A1111 records as "TI hashes"


class EmbeddingError(SdrtError):
    """An embedding file that cannot be used with this model."""


@dataclass(frozen=True)
class Embedding:
    name: str  # the trigger word
    vectors: dict[str, np.ndarray]  # text encoder component (or "*" for any single encoder) -> [n, width]
    path: Path
    short_hash: str

    @property
    def count(self) -> int:
        return next(iter(self.vectors.values())).shape[0]

    def for_encoder(self, component: str) -> np.ndarray | None:
        return self.vectors.get(component, self.vectors.get("*"))


def read_embedding(path: str | Path, token: str | None = None) -> Embedding:
    """One embedding file; `token` overrides the trigger word (default: the file's stem)."""
    path = Path(path)
    shown = printable(path)
    if path.suffix.lower() not in SUFFIXES:
        raise EmbeddingError(f"{shown} is not an embedding file ({', '.join(SUFFIXES)})")
    name = token or path.stem
    if not name.strip():
        raise EmbeddingError(f"{shown}: the trigger word is empty")
    if printable(name) != name:
        raise EmbeddingError(f"{shown}: the file's name is not UTF-8 text, so it cannot be a trigger word")
    try:
        if path.suffix.lower() == ".safetensors":
            data, _ = read_safetensors(path, MAX_EMBEDDING_BYTES, shown)
        else:
            data = load_torch_file(path, MAX_EMBEDDING_BYTES, shown)
    except (SafetensorsError, TorchFileError) as error:
        raise EmbeddingError(str(error)) from None
    vectors = _vectors(data, shown)
    counts = {v.shape[0] for v in vectors.values()}
    if len(counts) != 1 or 0 in counts:
        raise EmbeddingError(f"{shown} has vectors of different counts for its text encoders, or none")
    digest = hashlib.sha256(read_regular(path, MAX_EMBEDDING_BYTES, EmbeddingError, shown)).hexdigest()
    return Embedding(name, vectors, path, digest[:SHORT_HASH])


def printable(text: str | Path) -> str:
    """A file name as a message can print it: bytes that are not UTF-8 shown as \\xNN escapes."""
    text = str(text)
    try:
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _vectors(data, path: str) -> dict[str, np.ndarray]:
    if not isinstance(data, dict):
        raise EmbeddingError(f"{path} holds no embedding (a {type(data).__name__})")
    if any(key in data for key in SDXL_KEYS):
        return {SDXL_KEYS[key]: _matrix(data[key], path) for key in SDXL_KEYS if key in data}
    if A1111_SAFETENSORS_KEY in data:
        return {"*": _matrix(data[A1111_SAFETENSORS_KEY], path)}
    if "string_to_param" in data:
        params = data["string_to_param"]
        if not isinstance(params, dict) or len(params) != 1:
            raise EmbeddingError(
                f"{path} has {len(params) if isinstance(params, dict) else 'no'} embeddings in "
                "string_to_param; sdrt reads files with one"
            )
        return {"*": _matrix(next(iter(params.values())), path)}
    arrays = {key: value for key, value in data.items() if isinstance(value, np.ndarray)}
    if len(arrays) == 1:
        return {"*": _matrix(next(iter(arrays.values())), path)}
    raise EmbeddingError(f"{path} is not a textual-inversion embedding (keys: {', '.join(map(str, list(data)[:8]))})")


def _matrix(value, path: str) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.ndim not in (1, 2) or not np.issubdtype(value.dtype, np.floating):
        raise EmbeddingError(f"{path}: the embedding is not a vector or matrix of numbers")
    matrix = np.atleast_2d(value).astype(np.float32)
    if not np.isfinite(matrix).all():
        raise EmbeddingError(f"{path}: the embedding holds NaN or infinite values")
    return matrix


def find_embeddings(folder: str | Path) -> list[Path]:
    """The embedding files of a folder, its subfolders too (as A1111 reads them), by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EmbeddingError(f"embeddings folder {folder} does not exist")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES and is_regular(p))


@dataclass
class EmbeddingSet:
    """The loaded embeddings and those skipped (made for another model), as A1111 lists them."""

    loaded: list[Embedding] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why

    def names(self) -> list[str]:
        return [e.name for e in self.loaded]


@dataclass(frozen=True)
class EmbeddingSource:
    """An embedding file (with an optional trigger word) or a folder of them."""

    path: Path
    token: str | None = None

    @classmethod
    def parse(cls, text: str) -> EmbeddingSource:
        """PATH or PATH:TOKEN (a colon after the file's suffix starts the token)."""
        for suffix in SUFFIXES:
            head, found, token = text.rpartition(suffix + ":")
            if found and token:
                return cls(Path(head + suffix), token)
        return cls(Path(text))


def load_embeddings(sources: list[EmbeddingSource], check) -> EmbeddingSet:
    """Every file of the sources; `check(embedding)` says why one does not fit the model (or
    None). A file named on its own that does not fit is an error; one from a folder is
    skipped, with the reason, as A1111 skips embeddings made for another model."""
    result = EmbeddingSet()
    for source in sources:
        explicit = not source.path.is_dir()
        files = [(source.path, source.token)] if explicit else [(p, None) for p in find_embeddings(source.path)]
        for path, token in files:
            try:
                embedding = read_embedding(path, token)
                reason = check(embedding)
                if reason is None and embedding.name in result.names():
                    reason = f"another embedding is named {embedding.name!r}"
            except SdrtError as error:
                if explicit:
                    raise
                result.skipped[printable(path.stem)] = str(error)
                continue
            if reason is not None:
                if explicit:
                    raise EmbeddingError(f"{path}: {reason}")
                result.skipped[embedding.name] = reason
            else:
                result.loaded.append(embedding)
    return result
