"""Where LoRAs come from: files named by path, and a folder (`--lora-dir`) whose files are
named by their stem, subfolders included, as A1111 names them in `<lora:NAME>` tags. Parsed
files are kept (by path, size and modification time), a few at a time.

A server's requests are `confined` (their names come from clients): a name then finds a file of
the folder only (never a path; a symlink leading out of the folder is no LoRA of it), and errors
quote the name as sent, never a path (sdrt.runtime.files.confined)."""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from sdrt.runtime.features.lora.files import SUFFIXES, LoraFile, is_lora_file, read_lora
from sdrt.runtime.features.lora.flux_formats import FLUX1, BflLayout
from sdrt.runtime.features.lora.weights_map import LoraError
from sdrt.runtime.files.confined import HIDDEN_FOLDER, hide_paths, inside, name_problem, shown
from sdrt.runtime.files.safetensors_files import SafetensorsError, read_metadata

KEPT_FILES = 16  # parsed LoRA files kept in memory


@dataclass(frozen=True)
class ListedLora:
    """A LoRA of the folder as a listing shows it: its metadata, or why the file is bad."""

    name: str
    path: Path
    metadata: dict[str, str] = field(default_factory=dict)
    bad: str | None = None


class LoraLibrary:
    def __init__(self, folder: str | Path | None = None):
        self.folder = None if folder is None else Path(folder)
        if self.folder is not None and not self.folder.is_dir():
            raise LoraError(f"LoRA folder {self.folder} does not exist")
        self._files: OrderedDict[tuple, LoraFile] = OrderedDict()
        self._lock = threading.Lock()

    def names(self, confined: bool = False) -> dict[str, Path]:
        """Name -> file for every LoRA in the folder (the first by sorted path wins a name);
        `confined`: only files inside it once symlinks are resolved."""
        if self.folder is None:
            return {}
        found: dict[str, Path] = {}
        for path in sorted(self.folder.rglob("*")):
            if is_lora_file(path) and (not confined or inside(path, self.folder)):
                found.setdefault(path.stem, path)
        return found

    def listing(self) -> list[ListedLora]:
        """Every LoRA of the folder with its metadata (a safetensors header is read and checked);
        a bad file is listed as bad, with one warning line, and never stops the others. The
        listing is a server's: only files inside the folder once symlinks are resolved."""
        listed = []
        for name, path in self.names(confined=True).items():
            try:
                metadata = read_metadata(path, name) if path.suffix.lower() == ".safetensors" else {}
            except SafetensorsError as error:
                print(f"warning: LoRA {name} is listed as bad: {error}", file=sys.stderr)
                listed.append(ListedLora(name, path, bad=str(error)))
                continue
            listed.append(ListedLora(name, path, metadata))
        return listed

    def path_of(self, source: str, confined: bool = False) -> Path:
        """A LoRA's file: `source` as a path, else a name in the folder (a name only, when confined)."""
        if confined:
            return self._named(source)
        path = Path(source)
        if path.suffix.lower() in SUFFIXES and path.is_file():
            return path
        names = self.names()
        if source in names:
            return names[source]
        if self.folder is None:
            raise LoraError(
                f"LoRA {source!r} is not a file; name a LoRA file, or give a LoRA folder (--lora-dir) "
                "to name LoRAs by their file name"
            )
        close = [name for name in names if source.lower() in name.lower()][:3]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise LoraError(f"unknown LoRA {source!r}: no such file in {self.folder}{hint}")

    def _named(self, source: str) -> Path:
        """A client's name: a LoRA of the folder, or an error that shows no server path."""
        problem = name_problem(source)
        if problem is not None:
            raise LoraError(f"unknown LoRA {shown(source)}: {problem}; name one of this server's LoRAs")
        if self.folder is None:
            raise LoraError(f"unknown LoRA {shown(source)}: this server has no LoRA folder (--lora-dir)")
        names = self.names(confined=True)
        if source not in names:
            close = [name for name in names if source.lower() in name.lower()][:3]
            hint = f" (similar: {', '.join(close)})" if close else ""
            raise LoraError(f"unknown LoRA {shown(source)}: this server has no LoRA of that name{hint}")
        return names[source]

    def read(self, source: str, confined: bool = False, layout: BflLayout = FLUX1) -> LoraFile:
        """The parsed file `source` names (`confined`: a client's name, see the module's note),
        its BFL-named layers read with the model's `layout` (sdrt.runtime.features.lora.files)."""
        if not confined:
            return self._read(self.path_of(source), source, layout)
        path = self._named(source)
        try:
            return self._read(path, f"LoRA {shown(source)}", layout)
        except LoraError as error:
            folder = self.folder if self.folder is not None else path.parent
            raise LoraError(hide_paths(str(error), {path: f"LoRA {shown(source)}", folder: HIDDEN_FOLDER})) from None
        except OSError:
            raise LoraError(f"LoRA {shown(source)} cannot be read") from None

    def _read(self, path: Path, source: str, layout: BflLayout) -> LoraFile:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, layout.name)
        with self._lock:
            if key in self._files:
                self._files.move_to_end(key)
                return self._files[key]
        lora = read_lora(path, label=source, layout=layout)
        with self._lock:
            self._files[key] = lora
            while len(self._files) > KEPT_FILES:
                self._files.popitem(last=False)
        return lora
