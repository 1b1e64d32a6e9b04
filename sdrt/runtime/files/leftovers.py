"""Temporary files and folders a killed process leaves behind, cleaned by the next one.

sdrt names each of its temporary paths with the id of the process that made it (an export's
`.NAME.partial-PID`, the optimized-graph cache's `.KEY.PID`, a PNG's `.sdrt-PID-XXXX.partial`);
one whose process no longer runs is stale and removed when another process next works there.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path


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


def remove_stale(folder: Path, pattern: re.Pattern) -> list[Path]:
    """Removes the entries of `folder` whose name matches `pattern` (with a `pid` group) and
    whose process is gone; returns them. Errors (a race with another cleaner) are ignored."""
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or int(match["pid"]) == os.getpid() or pid_alive(int(match["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            try:
                entry.unlink()
            except OSError:
                continue
        removed.append(entry)
    return removed
