"""The weights of an ONNX file, read without the onnx package: each initializer's name, shape,
dtype and where its bytes lie (inside the .onnx file or in an external data file).

LoRA merging reads the pristine base weights it adds to from the exported graph, and the
session cache learns which weights an optimized graph kept; both need only this index. It
walks the protobuf wire format (ModelProto.graph -> GraphProto.initializer -> TensorProto),
skipping every other field by its length, so a graph with gigabytes of inline weights is
indexed without reading them.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdrt.errors import ModelFolderError

# Field numbers of onnx.proto3.
MODEL_GRAPH = 7
GRAPH_INITIALIZER = 5
TENSOR_DIMS, TENSOR_DATA_TYPE, TENSOR_NAME, TENSOR_RAW_DATA, TENSOR_EXTERNAL_DATA = 1, 2, 8, 9, 13
ENTRY_KEY, ENTRY_VALUE = 1, 2
WIRE_VARINT, WIRE_FIXED64, WIRE_LENGTH, WIRE_FIXED32 = 0, 1, 2, 5
#: TensorProto.DataType -> NumPy dtype (the types weights are stored in).
DATA_TYPES = {
    1: np.dtype(np.float32),
    10: np.dtype(np.float16),
    11: np.dtype(np.float64),
    6: np.dtype(np.int32),
    7: np.dtype(np.int64),
    2: np.dtype(np.uint8),  # MatMulNBits' packed codes (sdrt export --weights)
}


@dataclass(frozen=True)
class StoredTensor:
    """An initializer whose bytes lie at `offset` in `file` (raw, little-endian)."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    file: Path
    offset: int
    length: int

    def read(self) -> np.ndarray:
        count = int(np.prod(self.shape, dtype=np.int64))
        if count * self.dtype.itemsize != self.length:
            raise ModelFolderError(
                f"{self.file}: initializer {self.name} holds {self.length} bytes, its shape "
                f"{list(self.shape)} needs {count * self.dtype.itemsize}"
            )
        with open(self.file, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read(self.length)
        if len(data) != self.length:
            raise ModelFolderError(f"{self.file} ends inside initializer {self.name}; re-export the model")
        return np.frombuffer(data, self.dtype).reshape(self.shape)


def _varint(buffer, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buffer[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, position
        shift += 7


def _fields(buffer, start: int, end: int):
    """(field number, wire type, value) for each field in buffer[start:end]; a length-delimited
    value is its (start, end) span."""
    position = start
    while position < end:
        tag, position = _varint(buffer, position)
        field, wire = tag >> 3, tag & 7
        if wire == WIRE_VARINT:
            value, position = _varint(buffer, position)
        elif wire == WIRE_LENGTH:
            length, position = _varint(buffer, position)
            value = (position, position + length)
            position += length
        elif wire == WIRE_FIXED64:
            value, position = None, position + 8
        elif wire == WIRE_FIXED32:
            value, position = None, position + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if position > end:
            raise ValueError("a field runs past its message")
        yield field, wire, value


def _text(buffer, span) -> str:
    return bytes(buffer[span[0] : span[1]]).decode("utf-8")


def _tensor(buffer, span, path: Path) -> StoredTensor | None:
    name, dims, data_type, raw, external = "", [], None, None, {}
    for field, wire, value in _fields(buffer, *span):
        if field == TENSOR_NAME:
            name = _text(buffer, value)
        elif field == TENSOR_DIMS:
            if wire == WIRE_LENGTH:  # packed
                position = value[0]
                while position < value[1]:
                    dim, position = _varint(buffer, position)
                    dims.append(dim)
            else:
                dims.append(value)
        elif field == TENSOR_DATA_TYPE:
            data_type = value
        elif field == TENSOR_RAW_DATA:
            raw = value
        elif field == TENSOR_EXTERNAL_DATA:
            entry = {f: _text(buffer, v) for f, _, v in _fields(buffer, *value)}
            external[entry.get(ENTRY_KEY, "")] = entry.get(ENTRY_VALUE, "")
    dtype = DATA_TYPES.get(data_type)
    if dtype is None:
        return None
    if external:
        file = path.parent / external["location"]
        offset = int(external.get("offset", 0))
        length = int(external["length"]) if "length" in external else int(np.prod(dims)) * dtype.itemsize
        return StoredTensor(name, tuple(dims), dtype, file, offset, length)
    if raw is None:
        return None  # values in typed fields (small constants): not a weight sdrt touches
    return StoredTensor(name, tuple(dims), dtype, path, raw[0], raw[1] - raw[0])


def initializers(path: str | Path) -> dict[str, StoredTensor]:
    """The initializers of the ONNX file at `path` whose bytes are stored raw, by name."""
    path = Path(path)
    try:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
            found = {}
            for field, _, graph in _fields(buffer, 0, len(buffer)):
                if field != MODEL_GRAPH:
                    continue
                for inner, _, span in _fields(buffer, *graph):
                    if inner == GRAPH_INITIALIZER:
                        tensor = _tensor(buffer, span, path)
                        if tensor is not None:
                            found[tensor.name] = tensor
            return found
    except (OSError, ValueError, IndexError, UnicodeDecodeError, KeyError) as error:
        raise ModelFolderError(f"cannot read the weights of {path}: {error}") from None
