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


class _Storage:
    """A storage a hostile torch file refers to: its key and its element count."""

    def __init__(self, key: str, numel: int):
        self.key, self.numel = key, numel


class _TensorView:
    """A tensor as torch pickles it (a rebuild call over a storage), with any layout at all."""

    def __init__(self, storage: _Storage, offset, shape, stride):
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride

    def __reduce__(self):
        import collections

        import torch._utils

        args = (self.storage, self.offset, self.shape, self.stride, False, collections.OrderedDict())
        return torch._utils._rebuild_tensor_v2, args


def torch_zip(path: Path, tree, storages: dict[str, bytes], compress: bool = False) -> Path:
    """A torch zip file holding `tree` (tensors made with tensor_view) and the raw bytes of each
    storage, written by hand so that it can lie in ways torch.save never would."""
    import io
    import pickle
    import zipfile

    import torch

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _Storage):
                return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
            return None

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump(tree)
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=method) as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")
        for key, raw in storages.items():
            archive.writestr(f"archive/data/{key}", raw)
    return path


def tensor_view(key: str, numel: int, offset, shape, stride) -> _TensorView:
    """A float32 tensor of shape `shape` over storage `key` of `numel` elements."""
    return _TensorView(_Storage(key, numel), offset, shape, stride)
