"""Where an export is written: a marked temporary folder beside `--out`, renamed into place
only once the export is whole; the folder it replaces moved aside first and removed last, so an
export that fails or is killed never leaves a half-written folder in place, and what a killed one
leaves is swept by the next (sdrt.runtime.files.leftovers)."""

from __future__ import annotations

import errno
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

from sdrt.errors import ModelFolderError, SdrtError
from sdrt.runtime.files.leftovers import make_temporary_dir, remove_stale, remove_temporary_dir

WORK_DIR = ".work"  # scratch files inside the export's folder, removed before it is moved into place


class ExportError(SdrtError):
    """The export could not be written or did not reproduce the PyTorch model."""


# An export works in `.NAME.partial-PID/export` and moves the old folder into `.NAME.old-PID`
# (both marked as sdrt's temporary folders, so only they are ever swept; sdrt.runtime.files.leftovers).
STALE_EXPORT = re.compile(r"\..+\.(partial|old)-(?P<pid>\d+)")
CONTENT_DIR = "export"  # the folder inside `.NAME.partial-PID` that becomes NAME
PREVIOUS_DIR = "previous"  # the replaced folder, inside `.NAME.old-PID` until it is removed


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """An export's folder may be written: new, or (with `overwrite`) an earlier export or an
    empty folder; never a file, a FIFO or a device, nor a folder of someone else's files."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a folder; refusing to replace it")
    if not overwrite:
        raise ExportError(f"{out_dir} already exists; pass --overwrite to replace it")
    if not (out_dir / "manifest.json").is_file() and any(out_dir.iterdir()):
        raise ModelFolderError(f"{out_dir} is not an sdrt export; refusing to replace it")


@contextmanager
def staged(out_dir: Path, overwrite: bool):
    """The folder an export writes in, beside `out_dir`; moved into place when the block ends
    without an error and removed in any case (a failed or killed export leaves nothing). Write
    errors are one ExportError."""
    check_out_dir(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out_dir.parent, STALE_EXPORT)  # folders of exports that were killed
    partial = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    made = False
    try:
        make_temporary_dir(partial)
        made = True
        staging = partial / CONTENT_DIR
        staging.mkdir()
        yield staging
        shutil.rmtree(staging / WORK_DIR, ignore_errors=True)
        _replace(staging, out_dir)
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise ExportError(f"no space left on the device while writing {out_dir}") from None
        raise ExportError(f"cannot write {out_dir}: {error}") from None
    finally:
        if made:  # never a folder of that name that this export did not make
            remove_temporary_dir(partial)


def _replace(staging: Path, out_dir: Path) -> None:
    """Move the finished folder into place; an old one is removed only after that succeeds."""
    if not out_dir.exists():
        staging.rename(out_dir)
        return
    old = make_temporary_dir(out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}"))
    previous = old / PREVIOUS_DIR
    try:
        out_dir.rename(previous)
        staging.rename(out_dir)
    except OSError:
        if previous.exists():
            previous.rename(out_dir)  # the previous folder goes back where it was
        remove_temporary_dir(old)
        raise
    remove_temporary_dir(old)
