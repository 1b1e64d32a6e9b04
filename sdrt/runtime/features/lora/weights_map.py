"""Where a LoRA lands in an exported graph: the export writes, beside each engine a LoRA can
change (the UNet and the text encoders), a map from each Linear or Conv2d layer of the model
(its diffusers/transformers module path, and for the UNet its LDM name too) to the ONNX
initializer that holds its weight and the layout change between them. The export found each
pair by comparing the tensors' bytes, so a map entry is exact, never a guess from names.

The runtime reads the pristine weights it merges into from the exported graph itself
(sdrt.runtime.files.onnx_weights), never from an engine that may hold merged weights.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdrt.errors import GenerationError
from sdrt.runtime.files.json_files import read_json
from sdrt.runtime.files.onnx_weights import StoredTensor, initializers
from sdrt.runtime.manifest import TRANSFORMER, UNET, ComponentSpec
from sdrt.runtime.packed_weights import PackedLayout, pack, unpack

WEIGHTS_MAP_FILE = "weights_map.json"
WEIGHTS_MAP_FORMAT = 1
#: Module path prefix transformers' CLIP text models had before version 5 (LoRA files keep it).
TEXT_MODEL_PREFIX = "text_model."


class LoraError(GenerationError):
    """A LoRA cannot be used as asked (unreadable, not a LoRA, for another model, ...)."""

    def __init__(self, message: str):
        super().__init__(message, "loras")


def _matrix(weight: np.ndarray) -> np.ndarray:
    return weight.reshape(weight.shape[0], -1)


#: Layout changes from a layer's weight (PyTorch layout) to its initializer in the graph.
TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "same": lambda weight: weight,
    "transposed": lambda weight: weight.T,  # Linear -> MatMul(x, W^T)
    "matrix": _matrix,  # a 1x1 convolution stored as a matrix
    "matrix_transposed": lambda weight: _matrix(weight).T,
    "kernel": lambda weight: weight.reshape(*weight.shape, 1, 1),  # a Linear stored as a 1x1 convolution
}


def applicable_transforms(shape: tuple[int, ...]) -> list[str]:
    """The transforms that make sense for a weight of this shape (all are tried at export)."""
    if len(shape) == 2:
        return ["same", "transposed", "kernel"]
    if len(shape) == 4 and shape[2:] == (1, 1):
        return ["same", "matrix", "matrix_transposed"]
    return ["same"]


def kohya_name(path: str) -> str:
    """kohya's flattening of a module path (dots become underscores)."""
    return path.replace(".", "_")


@dataclass(frozen=True)
class MappedWeight:
    module: str  # the module path, as LoRA files name it (text encoders without "text_model.")
    initializer: str
    transform: str
    shape: tuple[int, ...]  # the layer's weight in PyTorch layout (what a LoRA's delta has)
    packed: PackedLayout | None = None  # a quantized export's MatMulNBits weight (sdrt.runtime.packed_weights)

    def to_graph(self, delta: np.ndarray) -> np.ndarray:
        return TRANSFORMS[self.transform](delta)


class WeightsMap:
    """One component's map (see the module docstring), with name lookup and pristine weights."""

    def __init__(self, component: str, onnx_file: Path, weights: dict[str, MappedWeight], aliases: dict[str, str]):
        self.component = component
        self.onnx_file = onnx_file
        self.weights = weights
        self._lookup: dict[str, str | None] = {}
        for module in weights:
            for name in self._forms(module) + self._forms(aliases.get(module, "")):
                # Two layers with one flattened name: neither is resolved by it.
                self._lookup[name] = module if self._lookup.get(name, module) == module else None
        self._stored: dict[str, StoredTensor] | None = None
        self._pristine: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def _forms(self, path: str) -> list[str]:
        if not path:
            return []
        forms = [path, TEXT_MODEL_PREFIX + path] if self.component not in (UNET, TRANSFORMER) else [path]
        return forms + [kohya_name(form) for form in forms]

    @classmethod
    def load(cls, folder: Path, component: str, spec: ComponentSpec) -> WeightsMap:
        if spec.qdq is not None:
            raise LoraError(
                f"LoRA cannot apply to this export of {folder.name}: its {component} is a {spec.qdq.qdq} Q/DQ graph "
                "(sdrt export --qdq), calibrated for its own weights; merge the LoRA into the model and export "
                "that, or use an export without --qdq"
            )
        if spec.quantization is not None and not spec.weights_map:
            raise LoraError(
                f"this export of {folder.name} has {spec.quantization.weights} weights in its {component} "
                "and no LoRA weights map (it was made before sdrt merged LoRAs into quantized weights); "
                "re-export the model to use LoRA"
            )
        if not spec.weights_map:
            raise LoraError(
                f"this export of {folder.name} has no LoRA weights map for its {component} (it was "
                "made before sdrt took LoRAs); re-export the model to use LoRA"
            )
        data = read_json(folder / spec.weights_map, kind=dict)
        if data.get("format") != WEIGHTS_MAP_FORMAT:
            raise LoraError(
                f"{folder / spec.weights_map} has format {data.get('format')!r}, not "
                f"{WEIGHTS_MAP_FORMAT}; re-export the model to use LoRA"
            )
        weights, aliases = {}, {}
        for module, entry in data["modules"].items():
            packed = PackedLayout(**entry["packed"]) if entry.get("packed") else None
            weights[module] = MappedWeight(
                module, entry["initializer"], entry["transform"], tuple(entry["shape"]), packed
            )
            if entry.get("ldm"):
                aliases[module] = entry["ldm"]
        return cls(component, folder / spec.file, weights, aliases)

    def resolve(self, name: str) -> str | None:
        """The module a LoRA key's layer name means (dotted or kohya-flattened, diffusers or
        LDM naming), or None."""
        return self._lookup.get(name)

    def pristine(self, initializer: str) -> np.ndarray:
        """The base weight as exported (read once, then kept)."""
        with self._lock:
            if initializer not in self._pristine:
                if self._stored is None:
                    self._stored = initializers(self.onnx_file)
                if initializer not in self._stored:
                    raise LoraError(
                        f"{self.onnx_file} has no initializer {initializer} although its weights map "
                        "names it; re-export the model"
                    )
                self._pristine[initializer] = self._stored[initializer].read()
            return self._pristine[initializer]

    def merged(self, mapped: MappedWeight, delta: np.ndarray) -> dict[str, np.ndarray]:
        """The initializers of one layer with `delta` (PyTorch layout, fp32) added to its pristine
        weight. A packed weight is unpacked, added to and packed again as the export packs it:
        each weight then lies within one step of its new block of (exported weight + delta),
        the exported weight being itself within one step of the fp32 one (docs/quantization.md)."""
        with np.errstate(over="ignore", invalid="ignore"):  # inf deltas: the decoded image's NaN check reports them
            if mapped.packed is None:
                base = self.pristine(mapped.initializer)
                return {mapped.initializer: (base.astype(np.float32) + mapped.to_graph(delta)).astype(base.dtype)}
            layout = mapped.packed
            codes, scales = self.pristine(layout.codes), self.pristine(layout.scales)
            weight = unpack(layout, codes, scales)[0] + mapped.to_graph(delta)
        new_codes, new_scales = pack(layout, weight, codes.shape, scales.shape)
        return {layout.codes: new_codes, layout.scales: new_scales.astype(scales.dtype)}
