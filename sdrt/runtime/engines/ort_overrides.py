"""Sessions with some weights replaced (LoRA-merged), and how to make them fast on the CPU.

ONNX Runtime takes replacement weights as `SessionOptions.add_initializer(name, value)`, and
silently ignores a name the graph does not have, so a replacement is only ever given by a
name known to be in the graph it is given to.

The fast way is the per-machine optimized graph (sdrt.runtime.engines.ort_cache: about 2 s
to open instead of 11 to 22 s of optimization for SD 1.5's UNet). That graph keeps most
weights under their names, byte for byte, but gives convolution filters a new name and a
blocked layout (ONNX Runtime's NCHWc transform: output and input channels in blocks of 8 or
16, zero-padded). For each replaced weight this module finds where the optimized graph holds
it: under its own name with equal bytes, or as a new tensor equal to one of the blocked
layouts of it, found by comparing bytes, never assumed. A weight it cannot place sends the
session to the slow way: the exported graph, optimized with the replacements in it. What it
found is saved in the cache entry, so a later process does not search again.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np

from sdrt.runtime.files.onnx_weights import StoredTensor, initializers

PLACEMENTS_FILE = "placements.json"
NCHWC_BLOCKS = (8, 16)  # MLAS's NCHWc block sizes (AVX2 and AVX-512)
_lock = threading.Lock()
_indexes: dict[str, dict[str, StoredTensor]] = {}


def _padded(size: int, block: int) -> int:
    return -(-size // block) * block


def blocked_filter(weight: np.ndarray, layout: str, block: int) -> np.ndarray:
    """A convolution filter [out, in, kh, kw] in an NCHWc layout: "OIHWBiBo" (input and output
    channels blocked) or "OIHWBo" (output channels only), zero-padded to whole blocks."""
    out_channels, in_channels, height, width = weight.shape
    out_padded = _padded(out_channels, block)
    if layout == "OIHWBo":
        padded = np.zeros((out_padded, in_channels, height, width), weight.dtype)
        padded[:out_channels] = weight
        return padded.reshape(out_padded // block, block, in_channels, height, width).transpose(0, 2, 3, 4, 1)
    in_padded = _padded(in_channels, block)
    padded = np.zeros((out_padded, in_padded, height, width), weight.dtype)
    padded[:out_channels, :in_channels] = weight
    return padded.reshape(out_padded // block, block, in_padded // block, block, height, width).transpose(
        0, 2, 4, 5, 3, 1
    )


LAYOUTS = ("OIHWBiBo", "OIHWBo")


def _index(path: Path) -> dict[str, StoredTensor]:
    key = str(path)
    with _lock:
        if key not in _indexes:
            _indexes[key] = initializers(path)
        return _indexes[key]


def _find(name: str, original: dict[str, StoredTensor], cached: dict[str, StoredTensor]) -> list | None:
    """Where the cached graph holds `name`: [name, "same"] or [new name, layout, block]; None if
    it holds it nowhere this module can see."""
    source = original[name]
    if name in cached:
        kept = cached[name]
        if kept.shape == source.shape and kept.dtype == source.dtype and np.array_equal(kept.read(), source.read()):
            return [name, "same", 0]
        return None
    weight = source.read()
    if weight.ndim != 4:
        return None
    new = [t for t in cached.values() if t.name not in original and t.dtype == weight.dtype]
    for layout in LAYOUTS:
        for block in NCHWC_BLOCKS:
            candidate = blocked_filter(weight, layout, block)
            for tensor in new:
                if tensor.length == candidate.nbytes and np.array_equal(
                    tensor.read().reshape(-1), candidate.reshape(-1)
                ):
                    return [tensor.name, layout, block]
    return None


def place(
    cache_folder: Path, source: Path, replacements: dict[str, np.ndarray], cached_model: str
) -> dict[str, np.ndarray] | None:
    """The replacements as the cached optimized graph's initializers, or None where one cannot
    be placed there (then the session must be built from `source`)."""
    record = cache_folder / PLACEMENTS_FILE
    try:
        known = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}
    except (OSError, ValueError):
        known = {}
    original = _index(source)
    cached = _index(cache_folder / cached_model)
    placed, learned = {}, False
    for name, value in replacements.items():
        if name not in original:
            return None
        if name not in known:
            known[name] = _find(name, original, cached)
            learned = True
        if known[name] is None or known[name][0] not in cached:
            return None
        target, layout, block = known[name]
        if layout == "same":
            placed[target] = value
        else:
            placed[target] = np.ascontiguousarray(blocked_filter(value, layout, block)).reshape(cached[target].shape)
    if learned:
        try:
            record.write_text(json.dumps(known), encoding="utf-8")
        except OSError:
            pass  # a read-only cache: found again next time
    return placed


def add_initializers(options, replacements: dict[str, np.ndarray]) -> list:
    """Gives `options` the replacements; returns the OrtValues, which must outlive the session."""
    import onnxruntime as ort

    values = []
    for name, array in replacements.items():
        value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array))
        options.add_initializer(name, value)
        values.append(value)
    return values
