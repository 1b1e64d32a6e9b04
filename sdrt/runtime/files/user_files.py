"""The one way sdrt opens a file a user names (styles, embeddings, LoRAs, JSON, images): a
regular file or a clear error at once, never a wait on a FIFO, a device or a socket, and never
more than a named number of bytes for its kind.

The path is checked with os.stat before it is opened (so a device is never opened), opened with
O_NONBLOCK (so a FIFO swapped in between cannot block the open) and checked again on the open
descriptor (so what is read is what was checked).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from sdrt.errors import SdrtError

#: The most bytes read from each kind of user file; none comes near its limit.
MAX_STYLES_BYTES = 4 * 2**20  # A1111's styles.csv: a few KB
MAX_JSON_BYTES = 64 * 2**20  # CLIP's tokenizer.json, the largest config: 3.6 MB
MAX_EMBEDDING_BYTES = 64 * 2**20  # textual inversion: a few vectors, KB
MAX_LORA_BYTES = 4 * 2**30  # the largest SDXL LoRAs (rank 256, fp32): under 2 GiB
MAX_IMAGE_BYTES = 512 * 2**20  # a PNG sdrt reads parameters from
READ_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
MIB = 2**20


def display_name(path: Path, label: str | None) -> str:
    """How a message names a file: as the client named it when given (a server must not reveal
    its folders), else its path."""
    return label if label is not None else str(path)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _size_text(limit: int) -> str:
    return f"{limit // 2**30} GiB" if limit >= 2**30 else f"{max(limit // MIB, 1)} MiB"


def check_regular(mode: int, size: int, name: str, max_bytes: int, error: type[SdrtError]) -> None:
    if not stat.S_ISREG(mode):
        raise error(f"{name} is {_kind(mode)}, not a regular file; sdrt reads only regular files")
    if size > max_bytes:
        raise error(f"{name} is larger than {_size_text(max_bytes)}; it is not a file sdrt reads")


def is_regular(path: str | Path) -> bool:
    """Path.is_file() that says no to FIFOs, devices and sockets (and to a missing file)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def present(path: str | Path, error: type[SdrtError], label: str | None = None) -> bool:
    """Whether `path` is a regular file (False if nothing is there); a FIFO, device, socket or
    folder in its place is `error`, so that a file sdrt looks for is never silently passed over."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # nothing there (or a file where a folder would be)
        return False
    except (OSError, ValueError) as failure:
        raise error(f"cannot read {display_name(Path(path), label)}: {failure}") from None
    if not stat.S_ISREG(mode):
        raise error(
            f"{display_name(Path(path), label)} is {_kind(mode)}, not a regular file; sdrt reads only regular files"
        )
    return True


def open_regular(path: str | Path, max_bytes: int, error: type[SdrtError], label: str | None = None) -> BinaryIO:
    """`path` opened for reading (binary), once it is known to be a regular file of at most
    `max_bytes`; any other case is `error` with one line naming the file."""
    path = Path(path)
    name = display_name(path, label)
    try:
        before = os.stat(path)
        check_regular(before.st_mode, before.st_size, name, max_bytes, error)
        descriptor = os.open(path, READ_FLAGS)
    except (FileNotFoundError, NotADirectoryError):  # nothing there (or a file where a folder would be)
        raise error(f"{name} does not exist") from None
    except (OSError, ValueError) as failure:
        raise error(f"cannot read {name}: {getattr(failure, 'strerror', None) or failure}") from None
    try:
        opened = os.fstat(descriptor)
        check_regular(opened.st_mode, opened.st_size, name, max_bytes, error)
        os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def read_regular(path: str | Path, max_bytes: int, error: type[SdrtError], label: str | None = None) -> bytes:
    """The bytes of a regular file of at most `max_bytes` (one that grows past it while read is
    refused too)."""
    name = display_name(Path(path), label)
    with open_regular(path, max_bytes, error, label) as handle:
        try:
            data = handle.read(max_bytes + 1)
        except OSError as failure:
            raise error(f"cannot read {name}: {failure.strerror or failure}") from None
    if len(data) > max_bytes:
        raise error(f"{name} is larger than {_size_text(max_bytes)}; it is not a file sdrt reads")
    return data


def read_regular_text(
    path: str | Path, max_bytes: int, error: type[SdrtError], label: str | None = None, encoding: str = "utf-8"
) -> str:
    """The text of a regular file (see read_regular); bytes that are not `encoding` are `error`."""
    data = read_regular(path, max_bytes, error, label)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as failure:
        text_kind = "UTF-8" if encoding.startswith("utf-8") else encoding
        raise error(
            f"{display_name(Path(path), label)} is not {text_kind} text ({failure.reason} at byte {failure.start})"
        ) from None
