"""Tensors from PyTorch's `.pt`/`.bin` files, without torch and without running the file's code.

A torch file is a zip archive whose `data.pkl` is a pickle: unpickling it runs whatever it names,
so sdrt never hands a user's file to `pickle.load` or `torch.load`. This reader unpickles with an
allow-list: dicts, lists, tuples, numbers and strings, the tensor rebuild functions (which get
NumPy arrays over the archive's storages), the storage types, and torch's ParameterDict (as a
plain dict of its parameters). Any other class or function in the file is refused with a clear
error before anything is called. Legacy (pre-zip) torch files are refused too.

A hostile file can also lie about its tensors (an offset or stride past its storage, a negative
stride, a shape far larger than its data) or be a zip bomb (a megabyte that inflates to
gigabytes). Before any array exists, each tensor's offset, shape and strides are checked against
its storage, and the archive's declared sizes (then each storage's and tensor's) against a
budget: the caller's limit for its kind of file, and at most EXPANSION_RATIO times the file's own
size (torch stores tensors uncompressed, so a real file expands by nothing).
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np

from sdrt.errors import SdrtError
from sdrt.runtime.files.user_files import MAX_LORA_BYTES, display_name, open_regular

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
#: Archives larger than this are not embedding or LoRA files (the default limit).
MAX_FILE_BYTES = MAX_LORA_BYTES
#: What a file may expand to, at most, relative to its own size (storages read, tensors built)...
EXPANSION_RATIO = 8
#: ... except that any file may expand to this much (a small file with a few copies of a tensor).
EXPANSION_FLOOR_BYTES = 64 * 2**20


class TorchFileError(SdrtError):
    """A torch file that cannot be read safely."""


class _ParameterDict(dict):
    """torch.nn.ParameterDict as pickled by old textual-inversion tools: keeps its parameters."""

    def __setstate__(self, state):
        if isinstance(state, dict) and isinstance(state.get("_parameters", {}), dict):
            self.update(state.get("_parameters", {}))


REBUILD_TENSOR = object()  # stands for torch's tensor rebuild functions: _Unpickler.rebuild_tensor


def _rebuild_parameter(data, *_ignored):
    return data


def _is_index(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str, name: str, budget: int):
        super().__init__(io.BytesIO(data))
        self.archive, self.root, self.name, self.budget = archive, root, name, budget
        self.storages: dict[str, np.ndarray] = {}
        self.spent = {"storages": 0, "tensors": 0}  # bytes read and built so far, each within the budget

    def _spend(self, kind: str, nbytes: int, what: str) -> None:
        self.spent[kind] += nbytes
        if self.spent[kind] > self.budget:
            raise TorchFileError(
                f"{self.name} expands to more than {_mib(self.budget)} ({what}); it is not a file "
                "sdrt reads (a zip bomb, or a file of another kind)"
            )

    def find_class(self, module: str, name: str):
        allowed = ALLOWED.get((module, name))
        if allowed is None:
            raise TorchFileError(
                f"{self.name} refers to {module}.{name}, which is not tensor data; sdrt reads only "
                "tensors from torch files (a .safetensors file avoids this)"
            )
        return self.rebuild_tensor if allowed is REBUILD_TENSOR else allowed

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or len(pid) < 3 or pid[0] != "storage" or pid[1] not in STORAGE_DTYPES:
            raise TorchFileError(f"{self.name} holds a storage sdrt cannot read ({pid!r:.80})")
        key = str(pid[2])
        if key not in self.storages:
            self.storages[key] = self._read_storage(STORAGE_DTYPES[pid[1]], key)
        return self.storages[key]

    def _read_storage(self, dtype, key: str) -> np.ndarray:
        try:
            member = self.archive.getinfo(f"{self.root}/data/{key}")
        except KeyError:
            raise TorchFileError(f"{self.name} lacks the tensor data {key}; the file is damaged") from None
        self._spend("storages", member.file_size, f"storage {key}")
        raw = self.archive.read(member)
        itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
        if len(raw) % itemsize:
            raise TorchFileError(f"{self.name}: storage {key} is not a whole number of elements; the file is damaged")
        if dtype == "bfloat16":
            return (np.frombuffer(raw, "<u2").astype(np.uint32) << BFLOAT16_SHIFT).view(np.float32)
        return np.frombuffer(raw, np.dtype(dtype).newbyteorder("<"))

    def rebuild_tensor(self, storage, offset, size, stride, *_ignored):
        """A copy of the tensor view (offset, size, stride) of `storage`, once every index it
        reaches is known to lie inside the storage."""
        if not isinstance(storage, np.ndarray) or storage.ndim != 1:
            raise TorchFileError(f"{self.name}: a tensor is rebuilt over something that is not a storage")
        size = tuple(size) if isinstance(size, list) else size
        stride = tuple(stride) if isinstance(stride, list) else stride
        if (
            not _is_index(offset)
            or not isinstance(size, tuple)
            or not isinstance(stride, tuple)
            or len(size) != len(stride)
            or not all(_is_index(dim) for dim in size)
            or not all(_is_index(step) for step in stride)
        ):
            raise TorchFileError(
                f"{self.name}: a tensor has a malformed layout (offset {offset!r:.40}, shape {size!r:.80}, "
                f"strides {stride!r:.80}: each must be a whole number from 0); the file is damaged or hostile"
            )
        count = 1
        for dim in size:
            count *= dim
        if count:
            last = offset + sum((dim - 1) * step for dim, step in zip(size, stride))
            if last >= storage.size:
                raise TorchFileError(
                    f"{self.name}: a tensor of shape {list(size)} (offset {offset}, strides {list(stride)}) "
                    f"reaches element {last} of a storage of {storage.size}; the file is damaged or hostile"
                )
        elif offset > storage.size:
            raise TorchFileError(f"{self.name}: an empty tensor starts past its storage; the file is damaged")
        self._spend("tensors", count * storage.itemsize, f"a tensor of shape {list(size)}")
        itemsize = storage.itemsize
        view = np.ndarray(
            size,
            storage.dtype,
            buffer=storage,
            offset=offset * itemsize if count else 0,
            strides=tuple(step * itemsize for step in stride),
        )
        return view.copy()


ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): REBUILD_TENSOR,
    ("torch._utils", "_rebuild_tensor"): REBUILD_TENSOR,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,  # a module's state (ParameterDict) holds sets of names
    ("__builtin__", "set"): set,
    ("torch.nn.modules.container", "ParameterDict"): _ParameterDict,
    **{("torch", name): name for name in STORAGE_DTYPES},
}


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB"


def _budget(archive: zipfile.ZipFile, file_bytes: int, max_bytes: int, name: str) -> int:
    """The bytes the file may expand to; refused at once when its zip directory declares more."""
    budget = min(max_bytes, max(EXPANSION_FLOOR_BYTES, EXPANSION_RATIO * file_bytes))
    declared = sum(member.file_size for member in archive.infolist())
    if declared > budget:
        raise TorchFileError(
            f"{name} declares {_mib(declared)} of contents in a {_mib(file_bytes)} file (at most "
            f"{_mib(budget)} is read); it is not a file sdrt reads (a zip bomb, or a file of another kind)"
        )
    return budget


def load_torch_file(path: str | Path, max_bytes: int = MAX_FILE_BYTES, label: str | None = None):
    """The file's object, with every tensor as a NumPy array. `max_bytes` bounds the file and what
    it expands to; `label` names the file in errors (default: its path)."""
    path = Path(path)
    name = display_name(path, label)
    with open_regular(path, max_bytes, TorchFileError, label) as handle:
        file_bytes = handle.seek(0, io.SEEK_END)
        handle.seek(0)
        if not zipfile.is_zipfile(handle):
            raise TorchFileError(
                f"{name} is not a zip-format torch file (a legacy pickle, which sdrt does not read): "
                "convert it to .safetensors"
            )
        try:
            with zipfile.ZipFile(handle) as archive:
                pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
                if len(pickles) != 1:
                    raise TorchFileError(f"{name} is a zip file but not a torch file (no single data.pkl)")
                budget = _budget(archive, file_bytes, max_bytes, name)
                root = pickles[0].split("/")[0]
                unpickler = _Unpickler(archive.read(pickles[0]), archive, root, name, budget)
                return unpickler.load()
        except TorchFileError:
            raise
        except RecursionError:
            raise TorchFileError(f"{name} is not a readable torch file: nested too deeply") from None
        except MemoryError:
            raise TorchFileError(f"{name} is not a readable torch file: it needs more memory than there is") from None
        except Exception as error:  # noqa: BLE001 (any failure of the allow-listed unpickling: a damaged file)
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise TorchFileError(f"{name} is not a readable torch file: {reason:.200}") from None
