"""Where `sdrt generate` writes its images, every path checked before any generation."""

from __future__ import annotations

import os
from pathlib import Path

from sdrt.errors import SdrtError

# Fallbacks where the file system does not say (Linux's values).
NAME_MAX, PATH_MAX = 255, 4096


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


def check_output(path: Path) -> None:
    """Everything that would make writing `path` fail, checked before any generation."""
    folder = path.parent
    if _is_dir(path):
        raise SdrtError(f"cannot write {path}: it is a folder")
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
    default = Path(f"sdrt-{seed}.png")
    base = Path(out) / default if out and _is_dir(Path(out)) else Path(out) if out else default
    if base.suffix.lower() != ".png":
        base = base.with_suffix(base.suffix + ".png") if base.suffix else base.with_suffix(".png")
    paths = [base] if count == 1 else [base.with_name(f"{base.stem}-{i}{base.suffix}") for i in range(1, count + 1)]
    for path in paths:
        check_output(path)
    return paths
