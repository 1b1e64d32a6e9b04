"""`.safetensors` files read into NumPy, bfloat16 included (NumPy has no bfloat16, so
safetensors' own NumPy API cannot read the many LoRAs saved in it): an 8-byte header length,
a JSON header of names, dtypes, shapes and byte ranges, then the data. Nothing is executed."""

from __future__ import annotations

import hashlib
import io
import json
import math
import struct
import sys
from pathlib import Path

import numpy as np

from sdrt.errors import SdrtError
from sdrt.runtime.files.torch_files import BFLOAT16_SHIFT
from sdrt.runtime.files.user_files import MAX_LORA_BYTES, display_name, open_regular

HEADER_LENGTH_BYTES = 8
MAX_HEADER_BYTES = 100 * 2**20  # the format's own limit
METADATA_KEY = "__metadata__"
DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": "bfloat16",
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
HASH_BLOCK_BYTES = 1 << 20
#: The default bound of a file read whole (a LoRA's; embeddings pass their own).
MAX_FILE_BYTES = MAX_LORA_BYTES
#: Reading only the header is bounded by MAX_HEADER_BYTES, whatever the file's size.
UNBOUNDED = sys.maxsize


class SafetensorsError(SdrtError):
    """A file that is not a readable safetensors file."""


def _header(handle, name: str) -> tuple[dict, int]:
    raw = handle.read(HEADER_LENGTH_BYTES)
    if len(raw) != HEADER_LENGTH_BYTES:
        raise SafetensorsError(f"{name} is not a safetensors file (too short)")
    (length,) = struct.unpack("<Q", raw)
    if length > MAX_HEADER_BYTES:
        raise SafetensorsError(f"{name} is not a safetensors file (header length {length})")
    try:
        header = json.loads(handle.read(length).decode("utf-8"))
    except RecursionError:
        raise SafetensorsError(f"{name} is not a safetensors file (its header is nested too deeply)") from None
    except (UnicodeDecodeError, ValueError):
        raise SafetensorsError(f"{name} is not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{name} is not a safetensors file (its header is not an object)")
    return header, HEADER_LENGTH_BYTES + length


def _open(path: Path, label: str | None, max_bytes: int = MAX_FILE_BYTES):
    return open_regular(path, max_bytes, SafetensorsError, label)


def _is_index(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _layout(entry, name: str, key: str, data_bytes: int) -> tuple[object, list[int], int, int]:
    """(dtype, shape, begin, end) of a header entry, each checked to be what the format allows
    and to fit the `data_bytes` after the header."""
    if not isinstance(entry, dict):
        raise SafetensorsError(f"{name}: tensor {key!r:.80} has a malformed header entry (not an object)")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise SafetensorsError(f"{name}: tensor {key!r:.80} has an unknown dtype {dtype!r:.40}")
    if not isinstance(shape, list) or not all(_is_index(size) for size in shape):
        raise SafetensorsError(
            f"{name}: tensor {key!r:.80} has a malformed shape {shape!r:.80} (sizes must be whole numbers from 0)"
        )
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_index(offset) for offset in offsets):
        raise SafetensorsError(f"{name}: tensor {key!r:.80} has malformed data_offsets {offsets!r:.80}")
    begin, end = offsets
    itemsize = 2 if dtype == "BF16" else np.dtype(DTYPES[dtype]).itemsize
    if not begin <= end <= data_bytes or end - begin != itemsize * math.prod(shape):
        raise SafetensorsError(f"{name}: tensor {key!r:.80} lies outside the file or has the wrong size for its shape")
    return DTYPES[dtype], shape, begin, end


def read_safetensors(
    path: str | Path, max_bytes: int = MAX_FILE_BYTES, label: str | None = None
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors by name, the file's string metadata). bfloat16 tensors come back as float32.
    `max_bytes` bounds the file; `label` names it in errors (default: its path)."""
    path = Path(path)
    name = display_name(path, label)
    try:
        with _open(path, label, max_bytes) as handle:
            header, start = _header(handle, name)
            data = handle.read()
    except OSError as error:
        raise SafetensorsError(f"cannot read {name}: {error.strerror or error}") from None
    metadata = header.pop(METADATA_KEY, None) or {}
    tensors = {}
    for key, entry in header.items():
        dtype, shape, begin, end = _layout(entry, name, key, len(data))
        raw = data[begin:end]
        if dtype == "bfloat16":
            array = (np.frombuffer(raw, "<u2").astype(np.uint32) << BFLOAT16_SHIFT).view(np.float32)
        else:
            array = np.frombuffer(raw, np.dtype(dtype).newbyteorder("<"))
        tensors[key] = array.reshape(shape)
    return tensors, _strings(metadata)


def _strings(metadata) -> dict[str, str]:
    return {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}


def tensor_names(path: str | Path, label: str | None = None) -> list[str]:
    """The names of the file's tensors, from its header alone."""
    path = Path(path)
    with _open(path, label, UNBOUNDED) as handle:
        header, _ = _header(handle, display_name(path, label))
    return [name for name in header if name != METADATA_KEY]


def read_metadata(path: str | Path, label: str | None = None) -> dict[str, str]:
    """The file's string metadata, without reading its tensors (whose header entries are
    checked, so a file that could never be read is an error here too)."""
    path = Path(path)
    name = display_name(path, label)
    with _open(path, label, UNBOUNDED) as handle:
        header, start = _header(handle, name)
        data_bytes = handle.seek(0, io.SEEK_END) - start
    for key, entry in header.items():
        if key != METADATA_KEY:
            _layout(entry, name, key, data_bytes)
    return _strings(header.get(METADATA_KEY) or {})


def tensor_data_sha256(path: str | Path, label: str | None = None) -> str:
    """sha256 of the data after the header: the hash A1111 (and kohya's additional networks)
    record for a safetensors LoRA, unchanged when only its metadata is edited."""
    path = Path(path)
    digest = hashlib.sha256()
    with _open(path, label) as handle:
        _, start = _header(handle, display_name(path, label))
        handle.seek(start)
        while block := handle.read(HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()
