"""Temporary folders a killed process leaves behind, cleaned by the next one.

sdrt names each of its temporary folders with the id of the process that made it (an export's
`.NAME.partial-PID`, the optimized-graph cache's `.KEY.PID`, a PNG's `.sdrt-PID-XXXX.partial`)
and writes a marker file inside it at once, recording that process and the folder's name. One
whose process no longer runs is stale and removed when another process next works there; so is
one that names this process's own id without being one this process made (an earlier process
had the same id: containers start each command with the same few ids). A name alone never
makes a path sdrt's: a user's `.thesis.old-3999999/` (no marker) or a plain file of any name is
never touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

MARKER_FILE = ".sdrt-temporary.json"
MARKER_KIND = "sdrt temporary folder"
MARKER_MAX_BYTES = 4096  # a marker is a few dozen bytes; a larger file is not one


_made: set[str] = set()  # the temporary folders this process made and has not removed


def _key(path: Path) -> str:
    return os.path.abspath(path)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (signal 0 checks without sending)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # none with this id (or an id no process can have)
        return False
    except PermissionError:  # it exists, owned by another user
        pass
    return True


def _marker(name: str) -> dict:
    return {"kind": MARKER_KIND, "pid": os.getpid(), "name": name}


def _write_marker(folder: Path) -> Path:
    _made.add(_key(folder))
    try:
        (folder / MARKER_FILE).write_text(json.dumps(_marker(folder.name)), encoding="utf-8")
    except BaseException:
        remove_temporary_dir(folder)
        raise
    return folder


def make_temporary_dir(path: Path) -> Path:
    """Create `path` (which must not exist) as one of sdrt's temporary folders: with the marker
    that lets a later process remove it once this one is gone."""
    path.mkdir()
    return _write_marker(path)


def make_unique_temporary_dir(parent: Path, prefix: str, suffix: str) -> Path:
    """A new temporary folder in `parent` named PREFIX + random + SUFFIX, with the marker."""
    return _write_marker(Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent)))


def unmark(folder: Path) -> None:
    """Drop the marker from a temporary folder that is about to become a kept one."""
    (folder / MARKER_FILE).unlink(missing_ok=True)
    _made.discard(_key(folder))


def remove_temporary_dir(folder: Path) -> None:
    """Remove a temporary folder this process made (errors ignored)."""
    shutil.rmtree(folder, ignore_errors=True)
    _made.discard(_key(folder))


def made_by_sdrt(entry: Path, pid: int) -> bool:
    """Whether `entry` is a real folder holding sdrt's marker for this name and process."""
    marker = entry / MARKER_FILE
    try:
        if entry.is_symlink() or not entry.is_dir() or marker.is_symlink() or not marker.is_file():
            return False
        if marker.stat().st_size > MARKER_MAX_BYTES:
            return False
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return record == {"kind": MARKER_KIND, "pid": pid, "name": entry.name}


def remove_stale(folder: Path, pattern: re.Pattern) -> list[Path]:
    """Removes the temporary folders in `folder` whose name matches `pattern` (with a `pid`
    group), that hold sdrt's marker for that process, and whose process is gone; returns them.
    Anything else (a plain file, a folder without the marker) stays. Errors (a race with
    another cleaner) are ignored."""
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None:
            continue
        pid = int(match["pid"])
        mine = pid == os.getpid() and _key(entry) in _made
        if mine or (pid != os.getpid() and pid_alive(pid)) or not made_by_sdrt(entry, pid):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed
