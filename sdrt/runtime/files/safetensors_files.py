"""`.safetensors` files read into NumPy, bfloat16 included (NumPy has no bfloat16, so
safetensors' own NumPy API cannot read the many LoRAs saved in it): an 8-byte header length,
a JSON header of names, dtypes, shapes and byte ranges, then the data. Nothing is executed."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np

from sdrt.errors import SdrtError
from sdrt.runtime.files.torch_files import BFLOAT16_SHIFT

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


class SafetensorsError(SdrtError):
    """A file that is not a readable safetensors file."""


def _header(handle, path: Path) -> tuple[dict, int]:
    raw = handle.read(HEADER_LENGTH_BYTES)
    if len(raw) != HEADER_LENGTH_BYTES:
        raise SafetensorsError(f"{path} is not a safetensors file (too short)")
    (length,) = struct.unpack("<Q", raw)
    if length > MAX_HEADER_BYTES:
        raise SafetensorsError(f"{path} is not a safetensors file (header length {length})")
    try:
        header = json.loads(handle.read(length).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise SafetensorsError(f"{path} is not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path} is not a safetensors file (its header is not an object)")
    return header, HEADER_LENGTH_BYTES + length


def read_safetensors(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors by name, the file's string metadata). bfloat16 tensors come back as float32."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            header, start = _header(handle, path)
            data = handle.read()
    except OSError as error:
        raise SafetensorsError(f"cannot read {path}: {error.strerror or error}") from None
    metadata = header.pop(METADATA_KEY, None) or {}
    tensors = {}
    for name, entry in header.items():
        try:
            dtype = DTYPES[entry["dtype"]]
            shape = [int(size) for size in entry["shape"]]
            begin, end = (int(offset) for offset in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise SafetensorsError(f"{path}: tensor {name!r} has a malformed header entry") from None
        itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
        if not 0 <= begin <= end <= len(data) or end - begin != itemsize * int(np.prod(shape, dtype=np.int64)):
            raise SafetensorsError(f"{path}: tensor {name!r} lies outside the file or has the wrong size")
        raw = data[begin:end]
        if dtype == "bfloat16":
            array = (np.frombuffer(raw, "<u2").astype(np.uint32) << BFLOAT16_SHIFT).view(np.float32)
        else:
            array = np.frombuffer(raw, np.dtype(dtype).newbyteorder("<"))
        tensors[name] = array.reshape(shape)
    return tensors, {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}


def tensor_names(path: str | Path) -> list[str]:
    """The names of the file's tensors, from its header alone."""
    path = Path(path)
    with open(path, "rb") as handle:
        header, _ = _header(handle, path)
    return [name for name in header if name != METADATA_KEY]


def read_metadata(path: str | Path) -> dict[str, str]:
    """The file's string metadata, without reading its tensors."""
    path = Path(path)
    with open(path, "rb") as handle:
        header, _ = _header(handle, path)
    metadata = header.get(METADATA_KEY) or {}
    return {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}


def tensor_data_sha256(path: str | Path) -> str:
    """sha256 of the data after the header: the hash A1111 (and kohya's additional networks)
    record for a safetensors LoRA, unchanged when only its metadata is edited."""
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        _, start = _header(handle, path)
        handle.seek(start)
        while block := handle.read(HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()
