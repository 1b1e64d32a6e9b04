"""The models an A1111 client can pick (`/sdapi/v1/sd-models`, `sd_model_checkpoint`): the folder
the server started with and, with `--models-dir`, every exported model folder there. A model's
hash is its manifest's SHA-256 (the export's fingerprint: it names every engine file's hash), and
its title is A1111's "NAME [HASH10]"."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sdrt.runtime.manifest import MANIFEST_NAME
from sdrt.serve.schemas import RequestError

SHORT_HASH = 10  # A1111's title shows the first 10 hex digits


@dataclass(frozen=True)
class ServedModel:
    name: str
    folder: Path
    sha256: str

    @property
    def title(self) -> str:
        return f"{self.name} [{self.sha256[:SHORT_HASH]}]" if self.sha256 else self.name

    def describe(self) -> dict:
        """A1111's `/sdapi/v1/sd-models` entry."""
        return {
            "title": self.title,
            "model_name": self.name,
            "hash": self.sha256[:SHORT_HASH] or None,
            "sha256": self.sha256 or None,
            "filename": str(self.folder),
            "config": None,
        }


def _fingerprint(folder: Path) -> str:
    manifest = folder / MANIFEST_NAME
    try:
        return hashlib.sha256(manifest.read_bytes()).hexdigest()
    except OSError:
        return ""


class ModelCatalog:
    """The served model and its alternatives; `load(folder)` makes a Pipeline with the server's
    load-time settings."""

    def __init__(self, first: Path, models_dir: Path | None, load: Callable[[Path], object]):
        self.first = Path(first)
        self.models_dir = None if models_dir is None else Path(models_dir)
        self.load = load

    def models(self) -> list[ServedModel]:
        """Read from the disk at every call (A1111's refresh-checkpoints is implied)."""
        folders = [self.first]
        if self.models_dir is not None and self.models_dir.is_dir():
            first = self.first.resolve()
            folders += sorted(
                path
                for path in self.models_dir.iterdir()
                if (path / MANIFEST_NAME).is_file() and path.resolve() != first
            )
        return [ServedModel(folder.name, folder, _fingerprint(folder)) for folder in folders]

    def is_served(self, model: ServedModel, folder: Path) -> bool:
        return model.folder.resolve() == Path(folder).resolve()

    def find(self, name: str) -> ServedModel | None:
        """A model by A1111 title ("NAME [HASH]"), name, hash, or a file-like name ("NAME.safetensors")."""
        wanted = name.strip()
        stem = wanted.split(" [", 1)[0].replace("\\", "/").rsplit("/", 1)[-1]
        names = {stem, stem.rsplit(".", 1)[0]}  # with or without a file extension
        for model in self.models():
            if model.name in names or (wanted and wanted in (model.title, model.sha256[:SHORT_HASH], model.sha256)):
                return model
        return None

    def named(self, name, param: str) -> ServedModel:
        """The model a request names in field `param`; a 400 naming it when there is none."""
        model = self.find(name) if isinstance(name, str) else None
        if model is None:
            raise RequestError(
                400,
                f"{param}: no model {str(name)[:100]!r}; this server has {self.describe_choices()} "
                "(GET /sdapi/v1/sd-models)",
                param,
            )
        return model

    def describe_choices(self) -> str:
        return ", ".join(model.title for model in self.models())
