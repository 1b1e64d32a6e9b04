"""Helpers of the hardening tests: what a clean failure looks like, and hostile files."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path


def assert_one_line_error(result, needle: str | None = None) -> str:
    """A CLI failure as sdrt promises it: non-zero exit, one line starting 'error:', no traceback."""
    output = result.output if hasattr(result, "output") else (result.stdout + result.stderr)
    lines = [line for line in output.splitlines() if line.strip()]
    assert result.exit_code != 0 if hasattr(result, "exit_code") else result.returncode != 0, output
    assert "Traceback" not in output, output
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    if needle is not None:
        assert needle in lines[0], lines[0]
    return lines[0]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_header(width: int, height: int, extra_chunks: list[tuple[bytes, bytes]] = ()) -> bytes:
    """A PNG that declares width x height (8-bit grayscale) but holds one tiny IDAT: a
    decompression bomb's header, made in microseconds."""
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    chunks = b"".join(_chunk(kind, data) for kind, data in extra_chunks)
    return PNG_SIGNATURE + header + chunks + _chunk(b"IDAT", zlib.compress(b"\0" * 16)) + _chunk(b"IEND", b"")


def gif_header(width: int, height: int) -> bytes:
    """A GIF whose logical screen and one image are width x height, with almost no data."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00\x3b"
    return screen + image


def copy_model(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target
