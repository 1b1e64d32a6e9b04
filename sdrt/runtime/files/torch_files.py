"""Tensors from PyTorch's `.pt`/`.bin` files, without torch and without running the file's code.

A torch file is a zip archive whose `data.pkl` is a pickle: unpickling it runs whatever it names,
so sdrt never hands a user's file to `pickle.load` or `torch.load`. This reader unpickles with an
allow-list: dicts, lists, tuples, numbers and strings, the tensor rebuild functions (which get
NumPy arrays over the archive's storages), the storage types, and torch's ParameterDict (as a
plain dict of its parameters). Any other class or function in the file is refused with a clear
error before anything is called. Legacy (pre-zip) torch files are refused too.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np

from sdrt.errors import SdrtError

#: torch storage type names and their element types (bfloat16 is read through uint16).
STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "DoubleStorage": np.float64,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
BFLOAT16_SHIFT = 16  # a bfloat16 is the high half of a float32
#: Archives larger than this are not embedding or LoRA files.
MAX_FILE_BYTES = 4 * 2**30


class TorchFileError(SdrtError):
    """A torch file that cannot be read safely."""


class _ParameterDict(dict):
    """torch.nn.ParameterDict as pickled by old textual-inversion tools: keeps its parameters."""

    def __setstate__(self, state):
        self.update(state.get("_parameters", {}))


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    if not size:
        return np.array(storage[offset])
    itemsize = storage.dtype.itemsize
    return np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
    ).copy()


def _rebuild_parameter(data, *_ignored):
    return data


ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,  # a module's state (ParameterDict) holds sets of names
    ("__builtin__", "set"): set,
    ("torch.nn.modules.container", "ParameterDict"): _ParameterDict,
    **{("torch", name): name for name in STORAGE_DTYPES},
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str, path: Path):
        super().__init__(io.BytesIO(data))
        self.archive, self.root, self.path = archive, root, path

    def find_class(self, module: str, name: str):
        allowed = ALLOWED.get((module, name))
        if allowed is None:
            raise TorchFileError(
                f"{self.path} refers to {module}.{name}, which is not tensor data; sdrt reads only "
                "tensors from torch files (a .safetensors file avoids this)"
            )
        return allowed

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or len(pid) < 3 or pid[0] != "storage" or pid[1] not in STORAGE_DTYPES:
            raise TorchFileError(f"{self.path} holds a storage sdrt cannot read ({pid!r:.80})")
        dtype, key = STORAGE_DTYPES[pid[1]], str(pid[2])
        try:
            raw = self.archive.read(f"{self.root}/data/{key}")
        except KeyError:
            raise TorchFileError(f"{self.path} lacks the tensor data {key}; the file is damaged") from None
        if dtype == "bfloat16":
            return (np.frombuffer(raw, np.uint16).astype(np.uint32) << BFLOAT16_SHIFT).view(np.float32)
        return np.frombuffer(raw, dtype)


def load_torch_file(path: str | Path):
    """The file's object, with every tensor as a NumPy array."""
    path = Path(path)
    if path.stat().st_size > MAX_FILE_BYTES:
        raise TorchFileError(f"{path} is larger than {MAX_FILE_BYTES // 2**30} GiB; it is not a file sdrt reads")
    if not zipfile.is_zipfile(path):
        raise TorchFileError(
            f"{path} is not a zip-format torch file (a legacy pickle, which sdrt does not read): "
            "convert it to .safetensors"
        )
    with zipfile.ZipFile(path) as archive:
        pickles = [name for name in archive.namelist() if name.endswith("/data.pkl") and name.count("/") == 1]
        if len(pickles) != 1:
            raise TorchFileError(f"{path} is a zip file but not a torch file (no single data.pkl)")
        root = pickles[0].split("/")[0]
        try:
            return _Unpickler(archive.read(pickles[0]), archive, root, path).load()
        except TorchFileError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as error:
            raise TorchFileError(f"{path} is not a readable torch file: {error}") from None
