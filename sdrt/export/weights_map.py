"""The LoRA weights map of an exported component (read by sdrt.runtime.features.lora.weights_map).

Before the module is traced away, every Linear and Conv2d weight is fingerprinted in each
layout the graph could hold it in (sdrt.runtime.features.lora.weights_map.TRANSFORMS), in the graph's
precision (fp16 exactly as the fp16 conversion rounds it). After the final graph is written,
its initializers are hashed and each layer takes the one initializer whose bytes equal one of
its fingerprints: an exact comparison, so an entry is never a guess. A layer whose weight the
graph does not hold as one tensor (folded into another, or two layers with equal weights) is
listed as unmapped, and a LoRA key for it is reported at generation time.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sdrt.export.quantize import PACKED_SOURCES_FILE
from sdrt.export.staging import WORK_DIR
from sdrt.runtime.features.lora.weights_map import (
    TEXT_MODEL_PREFIX,
    TRANSFORMS,
    WEIGHTS_MAP_FILE,
    WEIGHTS_MAP_FORMAT,
    applicable_transforms,
)
from sdrt.runtime.files.json_files import read_json
from sdrt.runtime.files.onnx_weights import initializers


@dataclass
class Fingerprints:
    """Digest of a layer's weight in each candidate layout -> (module, transform, shape in the
    graph), and the layers' shapes and LDM names. A reshape keeps the bytes, so the stored
    shape tells "same" from "kernel" or "matrix"."""

    digests: dict[str, list[tuple[str, str, tuple[int, ...]]]] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    ldm: dict[str, str] = field(default_factory=dict)


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _stored(array: np.ndarray, fp16: bool) -> np.ndarray:
    if not fp16:
        return array.astype(np.float32)
    from onnxruntime.transformers.float16 import convert_np_to_float16

    return convert_np_to_float16(array).astype(np.float16)  # clamps as the fp16 conversion does


def fingerprint(model, component: str, fp16: bool) -> Fingerprints:
    """Fingerprints of the Linear and Conv2d layers of `model` (the diffusers UNet or the
    transformers text model the component wraps)."""
    import torch

    prints = Fingerprints()
    ldm_name = _ldm_namer(model) if component == "unet" else None
    for path, module in model.named_modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        name = path[len(TEXT_MODEL_PREFIX) :] if path.startswith(TEXT_MODEL_PREFIX) else path
        weight = module.weight.detach().to(torch.float32).cpu().numpy()
        prints.shapes[name] = tuple(weight.shape)
        reshaped_digest = None  # a reshape (a view of the weight) keeps its bytes: hashed once
        for transform in applicable_transforms(tuple(weight.shape)):
            arranged = np.ascontiguousarray(TRANSFORMS[transform](weight))
            if np.shares_memory(arranged, weight):
                reshaped_digest = reshaped_digest or _digest(_stored(arranged, fp16))
                digest = reshaped_digest
            else:
                digest = _digest(_stored(arranged, fp16))
            prints.digests.setdefault(digest, []).append((name, transform, tuple(arranged.shape)))
        if ldm_name is not None:
            prints.ldm[name] = ldm_name(name)
    return prints


def _ldm_namer(unet):
    """module path -> its LDM name (kohya's SDXL LoRAs use them), or "" where none exists."""
    from sdrt.export.ldm_checkpoint import unet_key

    config = unet.config
    with_attention = {index for index, kind in enumerate(config.up_block_types) if "CrossAttn" in kind}

    def name(path: str) -> str:
        try:
            return unet_key(path + ".weight", config.layers_per_block, with_attention)[: -len(".weight")]
        except ValueError:
            return ""

    return name


def write_weights_map(
    onnx_file: Path, prints: Fingerprints, component: str, packed: dict[str, dict] | None = None
) -> tuple[Path, list[str]]:
    """Matches the graph's initializers to the fingerprints and writes WEIGHTS_MAP_FILE beside
    `onnx_file`; returns the file and the layers left unmapped. `packed`: the packed weights of a
    quantized graph by their codes' initializer, each with the digest and shape of the fp32
    weight it was packed from (sdrt.export.quantize.PACKED_SOURCES_FILE); a layer matched to
    one gets its layout in the map (`packed`), and LoRAs are merged into it unpacked, then packed
    again (sdrt.runtime.features.lora.merge)."""
    packed = packed or {}
    candidates = [
        (t.name, t.shape, _digest(t.read())) for t in initializers(onnx_file).values() if t.name not in packed
    ]
    candidates += [(name, tuple(entry["shape"]), entry["sha256"]) for name, entry in packed.items()]
    by_layer: dict[str, list[tuple[str, str]]] = {}
    claimed: dict[str, int] = {}
    for name, stored_shape, digest in candidates:
        for module, transform, shape in prints.digests.get(digest, ()):
            if shape != stored_shape:
                continue
            by_layer.setdefault(module, []).append((name, transform))
            claimed[name] = claimed.get(name, 0) + 1
    modules, unmapped = {}, []
    for module, shape in prints.shapes.items():
        found = by_layer.get(module, [])
        # One initializer, held by this layer alone: anything else would merge a LoRA twice or
        # into another layer.
        if len(found) != 1 or claimed[found[0][0]] != 1:
            unmapped.append(module)
            continue
        initializer, transform = found[0]
        modules[module] = {"initializer": initializer, "transform": transform, "shape": list(shape)}
        if initializer in packed:
            modules[module]["packed"] = packed[initializer]["layout"]
        if prints.ldm.get(module):
            modules[module]["ldm"] = prints.ldm[module]
    path = onnx_file.with_name(WEIGHTS_MAP_FILE)
    data = {"format": WEIGHTS_MAP_FORMAT, "component": component, "modules": modules, "unmapped": unmapped}
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return path, unmapped


def lora_fingerprints(component, options) -> Fingerprints | None:
    """The fingerprints of a component's LoRA layers, taken before it is traced (None: the
    component takes no LoRA)."""
    if component.lora_model is None:
        return None
    return fingerprint(component.lora_model, component.name, options.precision_of(component.name) == "fp16")


def record_weights_map(
    final: Path, prints: Fingerprints | None, component: str, staging: Path, files: list[Path], progress
) -> str:
    """Writes the weights map of an exported component (appended to `files`) and says how many
    layers it maps; returns its path in the folder, "" without fingerprints."""
    if prints is None:
        return ""
    sources = staging / WORK_DIR / component / PACKED_SOURCES_FILE  # written by a quantized export
    packed = read_json(sources, kind=dict) if sources.is_file() else None
    map_file, unmapped = write_weights_map(final, prints, component, packed)
    files.append(map_file)
    shown = ", ".join(unmapped[:3]) + (", ..." if len(unmapped) > 3 else "")
    progress(
        f"{component}: LoRA map of {len(prints.shapes) - len(unmapped)} layers"
        + (f" ({len(unmapped)} not held as one tensor: {shown})" if unmapped else "")
    )
    return map_file.relative_to(staging).as_posix()
