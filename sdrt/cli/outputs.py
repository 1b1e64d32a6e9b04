"""Where the `sdrt` commands write their files (generate's images, the JSON reports of bench and
verify, bench's plot), every path checked before any work, and write errors as one line."""

from __future__ import annotations

import os
from pathlib import Path

from sdrt.errors import SdrtError

# Fallbacks where the file system does not say (Linux's values).
NAME_MAX, PATH_MAX = 255, 4096
PNG_SUFFIX = ".png"


def _limit(folder: Path, name: str, fallback: int) -> int:
    try:
        return os.pathconf(folder, name)
    except (OSError, ValueError):
        return fallback


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a name too long to look up: check_output says so
        return False


def _is_special(path: Path) -> bool:
    """Whether `path` is something other than a regular file or folder (a FIFO, a device, a
    socket): writing a file there would replace it, or block."""
    try:
        return path.exists() and not path.is_file() and not path.is_dir()
    except OSError:
        return False


def check_output(path: Path) -> None:
    """Everything that would make writing `path` fail, checked before any generation."""
    folder = path.parent
    if _is_dir(path):
        raise SdrtError(f"cannot write {path}: it is a folder")
    if _is_special(path):
        raise SdrtError(f"cannot write {path}: it exists and is not a regular file (refusing to replace it)")
    if not _is_dir(folder):
        raise SdrtError(f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise SdrtError(f"cannot write {path}: folder {folder} is not writable")
    name_bytes, name_max = len(os.fsencode(path.name)), _limit(folder, "PC_NAME_MAX", NAME_MAX)
    if name_bytes > name_max:
        raise SdrtError(
            f"cannot write {path.name[:40]}...: the file name is {name_bytes} bytes, "
            f"more than the {name_max} this file system allows"
        )
    path_bytes, path_max = len(os.fsencode(str(path.absolute()))), _limit(folder, "PC_PATH_MAX", PATH_MAX)
    if path_bytes >= path_max:
        raise SdrtError(f"cannot write the output: its path is {path_bytes} bytes, more than {path_max - 1}")


def output_paths(out: str | None, seed: int, count: int) -> list[Path]:
    """Where the images go: --out (a file name, or an existing folder to put sdrt-SEED.png in),
    with -1, -2, ... added for several images; every path checked first."""
    if out is not None and not out.strip():
        raise SdrtError("--out is empty: give a PNG file name or an existing folder")
    if out and _is_dir(Path(out)) and Path(out).suffix.lower() == PNG_SUFFIX:
        raise SdrtError(f"cannot write {out}: it is a folder (name a PNG file, or a folder to put sdrt-SEED.png in)")
    default = Path(f"sdrt-{seed}.png")
    base = Path(out) / default if out and _is_dir(Path(out)) else Path(out) if out else default
    if base.suffix.lower() != PNG_SUFFIX:
        base = base.with_suffix(base.suffix + PNG_SUFFIX) if base.suffix else base.with_suffix(PNG_SUFFIX)
    paths = [base] if count == 1 else [base.with_name(f"{base.stem}-{i}{base.suffix}") for i in range(1, count + 1)]
    for path in paths:
        check_output(path)
    return paths


def check_report(path: str | None, option: str) -> None:
    """A report file's path (--json, --plot), checked before any work: not empty, not a folder,
    in a folder that exists, and writable. A special file (/dev/stdout) is written in place."""
    if path is None:
        return
    if not path.strip():
        raise SdrtError(f"{option} is empty: give a file name")
    target = Path(path)
    if _is_dir(target):
        raise SdrtError(f"cannot write {option} {path}: it is a folder")
    if target.exists():
        if not os.access(target, os.W_OK):
            raise SdrtError(f"cannot write {option} {path}: the file is not writable")
        return
    folder = target.parent
    if not _is_dir(folder):
        raise SdrtError(f"cannot write {option} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise SdrtError(f"cannot write {option} {path}: folder {folder} is not writable")


def write_report(path: str, text: str, option: str) -> None:
    """Write a report; a failure (disk full, a file that vanished) is one SdrtError."""
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as error:
        raise SdrtError(f"cannot write {option} {path}: {error.strerror or error}") from None
