"""The models a server runs requests on. A request's model is its own: a request that names a
model (A1111's override_settings.sd_model_checkpoint, OpenAI's `model`) runs on that model and
changes nothing for anyone else; a request that names none runs on the server's default model,
which only an admin action replaces (A1111's POST /sdapi/v1/options with sd_model_checkpoint)."""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdrt.runtime.manifest import Manifest

#: Models besides the default kept loaded for the requests that name them (the least recently
#: used is dropped first; a batch running on a dropped model keeps it until the batch ends).
KEPT_MODELS = 1


class ModelLock:
    """Batches share the served models (several at once with --concurrency); replacing the
    default waits for the running ones and holds new ones back until the new model is in place."""

    def __init__(self):
        self._condition = threading.Condition()
        self._running = 0
        self._replacing = False

    @contextlib.contextmanager
    def shared(self):
        with self._condition:
            self._condition.wait_for(lambda: not self._replacing)
            self._running += 1
        try:
            yield
        finally:
            with self._condition:
                self._running -= 1
                self._condition.notify_all()

    @contextlib.contextmanager
    def exclusive(self):
        with self._condition:
            self._condition.wait_for(lambda: not self._replacing)
            self._replacing = True
            self._condition.wait_for(lambda: self._running == 0)
        try:
            yield
        finally:
            with self._condition:
                self._replacing = False
                self._condition.notify_all()


def folder_key(folder: Path) -> Path:
    """One key per model folder, whatever path (a symlink, a relative path) names it."""
    return Path(folder).resolve()


class ModelPool:
    """The default pipeline and the other models requests name: each loaded on first use (in the
    worker that runs it), at most `keep` of them kept. `load(folder)` makes a Pipeline with the
    server's load-time settings (None: the default is the only model)."""

    def __init__(self, default, load: Callable[[Path], object] | None, keep: int = KEPT_MODELS):
        self.default = default
        self._load = load
        self._keep = keep
        self._loaded: OrderedDict[Path, Any] = OrderedDict()
        self._manifests: dict[Path, Manifest] = {}
        self._lock = threading.Lock()

    def key(self, folder: Path | None) -> Path:
        """The model a job runs on: its own folder, or the default's (None)."""
        return folder_key(self.default.folder if folder is None else folder)

    def is_default(self, folder: Path | None) -> bool:
        return folder is None or self.key(folder) == self.key(None)

    def get(self, folder: Path | None):
        """The pipeline of `folder` (None: the default), loaded now if it is not loaded."""
        if folder is None or self.is_default(folder):
            return self.default
        key = self.key(folder)
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            if self._load is None:
                raise RuntimeError(f"this server serves only {self.default.folder.name}")
            pipeline = self._load(Path(folder))
            self._loaded[key] = pipeline
            while len(self._loaded) > self._keep:
                self._loaded.popitem(last=False)
            return pipeline

    def manifest(self, folder: Path | None) -> Manifest:
        """The manifest of a job's model (for its batch key and batch limit), read once."""
        if self.is_default(folder):
            return self.default.manifest
        key = self.key(folder)
        with self._lock:
            if key in self._loaded:
                return self._loaded[key].manifest
            if key not in self._manifests:
                self._manifests[key] = Manifest.load(key)
            return self._manifests[key]

    def replace_default(self, folder: Path) -> None:
        """The admin switch: `folder` is the default from now on (reused when it is loaded)."""
        key = folder_key(folder)
        with self._lock:
            pipeline = self._loaded.pop(key, None)
        if pipeline is None:
            if self._load is None:
                raise RuntimeError(f"this server serves only {self.default.folder.name}")
            pipeline = self._load(Path(folder))
        self.default = pipeline
