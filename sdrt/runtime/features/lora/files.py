"""LoRA files, read without torch, into low-rank layers named as their file names them.

Formats (each key is a layer name, a part prefix and a tensor suffix):
- kohya / A1111 (`lora_unet_...`, `lora_te_...`, SDXL `lora_te1_` / `lora_te2_`): layer names
  flattened with underscores (diffusers module paths, or LDM ones for SDXL UNets), tensors
  `lora_down.weight`, `lora_up.weight` and a scalar `alpha`; LoCon layers are convolutions.
- diffusers / PEFT (`unet.`, `text_encoder.`, `text_encoder_2.` and dotted module paths):
  `lora_A.weight` / `lora_B.weight` (`base_layer` stripped), alpha and rank from the
  `lora_adapter_metadata` entry of the file's metadata; diffusers' older `lora.down/up.weight`
  and `processor.to_q_lora.down.weight` layouts too.
Tensors of other network types (LoHa `hada_`, LoKr `lokr_`, DoRA, Tucker `lora_mid`) are not
merged: they are reported with the keys nothing uses.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sdrt.runtime.features.lora.weights_map import LoraError
from sdrt.runtime.files.safetensors_files import SafetensorsError, read_safetensors, tensor_data_sha256
from sdrt.runtime.files.torch_files import TorchFileError, load_torch_file

SUFFIXES = (".safetensors", ".pt", ".ckpt", ".bin")
SHORT_HASH = 12  # hex digits A1111 records
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"
#: Key prefix -> the component its layers belong to, and whether names are kohya-flattened.
PART_PREFIXES = (
    ("lora_unet_", "unet", True),
    ("lora_te1_", "text_encoder", True),
    ("lora_te2_", "text_encoder_2", True),
    ("lora_te_", "text_encoder", True),
    ("unet.", "unet", False),
    ("text_encoder_2.", "text_encoder_2", False),
    ("text_encoder.", "text_encoder", False),
    ("base_model.model.", "unet", False),
)
#: Tensor suffix -> which factor it is (down: rank x in, up: out x rank).
FACTOR_SUFFIXES = (
    (".lora_down.weight", "down"),
    (".lora_up.weight", "up"),
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".lora.down.weight", "down"),
    (".lora.up.weight", "up"),
    (".lora_linear_layer.down.weight", "down"),
    (".lora_linear_layer.up.weight", "up"),
    (".alpha", "alpha"),
)
#: diffusers' attention-processor layout: `attn1.processor.to_q_lora.down.weight` is `attn1.to_q`.
PROCESSOR_LAYER = re.compile(r"(?P<block>.+)\.processor\.(?P<proj>to_q|to_k|to_v|to_out)_lora$")
PEFT_ADAPTER = re.compile(r"\.(lora_[AB])\.[^.]+\.weight$")  # lora_A.<adapter>.weight


@dataclass
class LoraLayer:
    component: str
    name: str  # as the file names it: kohya-flattened or a dotted module path
    down: np.ndarray | None = None
    up: np.ndarray | None = None
    alpha: float | None = None
    rank_stabilized: bool = False  # rsLoRA: the scale is alpha / sqrt(rank)
    keys: list[str] = field(default_factory=list)

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    def scale(self) -> float:
        """alpha / rank; alpha defaults to the rank (scale 1), as kohya and diffusers do."""
        if self.alpha is None:
            return 1.0
        return self.alpha / (np.sqrt(self.rank) if self.rank_stabilized else self.rank)

    def delta(self, shape: tuple[int, ...]) -> np.ndarray:
        """up @ down x alpha / rank in the layer's weight shape (a LoCon layer's down is a
        full kernel and its up a 1x1 convolution)."""
        up = self.up.reshape(self.up.shape[0], -1).astype(np.float32)
        down = self.down.reshape(self.rank, -1).astype(np.float32)
        if up.shape[1] != self.rank or up.shape[0] != shape[0] or down.shape[1] != int(np.prod(shape[1:])):
            raise ValueError(f"up {list(self.up.shape)} and down {list(self.down.shape)} do not make {list(shape)}")
        return (up @ down * np.float32(self.scale())).reshape(shape)


@dataclass
class LoraFile:
    path: Path
    name: str
    short_hash: str  # A1111's: sha256 of the tensor data, first 12 hex digits
    sha256: str
    layers: list[LoraLayer]
    ignored: list[str]  # keys of a kind sdrt does not merge
    base_model: str  # the file's own claim (kohya's ss_base_model_version), "" if none


def read_lora(path: str | Path, name: str | None = None) -> LoraFile:
    path = Path(path)
    if not path.is_file():
        raise LoraError(f"LoRA file {path} does not exist")
    if path.suffix.lower() not in SUFFIXES:
        raise LoraError(f"{path} is not a LoRA file ({', '.join(SUFFIXES)})")
    try:
        if path.suffix.lower() == ".safetensors":
            tensors, metadata = read_safetensors(path)
            sha256 = tensor_data_sha256(path)
        else:
            tensors, metadata = load_torch_file(path), {}
            sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    except (SafetensorsError, TorchFileError) as error:
        raise LoraError(str(error)) from None
    if not isinstance(tensors, dict) or not all(isinstance(v, np.ndarray) for v in tensors.values()):
        raise LoraError(f"{path} is not a LoRA: it holds no plain mapping of tensors")
    layers, ignored = _layers(tensors, _peft_config(metadata, path))
    if not layers:
        raise LoraError(
            f"{path} is not a LoRA: none of its {len(tensors)} keys is a LoRA layer "
            f"(first keys: {', '.join(list(tensors)[:3])})"
        )
    return LoraFile(
        path, name or path.stem, sha256[:SHORT_HASH], sha256, layers, ignored, metadata.get("ss_base_model_version", "")
    )


def _peft_config(metadata: dict[str, str], path: Path) -> dict:
    raw = metadata.get(DIFFUSERS_METADATA_KEY)
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except ValueError:
        raise LoraError(f"{path}: its {DIFFUSERS_METADATA_KEY} metadata is not JSON") from None
    return config if isinstance(config, dict) else {}


def _split(key: str) -> tuple[str, str, str, bool] | None:
    """(component, layer name, factor, flattened) of a key, or None for a key sdrt does not merge."""
    key = PEFT_ADAPTER.sub(r".\1.weight", key)
    for suffix, factor in FACTOR_SUFFIXES:  # noqa: B007 (factor is the matching suffix's, used after the break)
        if key.endswith(suffix):
            stem = key[: -len(suffix)]
            break
    else:
        return None
    for prefix, component, flattened in PART_PREFIXES:
        if stem.startswith(prefix):
            name = stem[len(prefix) :]
            if not flattened:
                name = name.replace(".base_layer", "")
                if match := PROCESSOR_LAYER.fullmatch(name):
                    name = f"{match['block']}.{match['proj']}" + (".0" if match["proj"] == "to_out" else "")
            return component, name, factor, flattened
    return None


def _layers(tensors: dict[str, np.ndarray], peft: dict) -> tuple[list[LoraLayer], list[str]]:
    layers: dict[tuple[str, str], LoraLayer] = {}
    ignored = []
    for key, value in tensors.items():
        split = _split(key)
        if split is None:
            ignored.append(key)
            continue
        component, name, factor, flattened = split
        layer = layers.setdefault((component, name), LoraLayer(component, name))
        layer.keys.append(key)
        if factor == "alpha":
            layer.alpha = float(np.asarray(value, dtype=np.float64).reshape(-1)[0])
        else:
            setattr(layer, factor, value)
        if not flattened and layer.alpha is None:
            layer.alpha, layer.rank_stabilized = _peft_alpha(peft, component, name)
    complete = []
    for layer in layers.values():
        if layer.down is None or layer.up is None:
            ignored.extend(layer.keys)  # half a layer: nothing to merge
        else:
            complete.append(layer)
    return complete, ignored


def _peft_alpha(config: dict, component: str, name: str) -> tuple[float | None, bool]:
    """(lora_alpha, rsLoRA) for a layer from diffusers' metadata, its alpha_pattern first."""
    alpha = config.get(f"{component}.lora_alpha")
    for pattern, value in (config.get(f"{component}.alpha_pattern") or {}).items():
        if name == pattern or name.endswith("." + pattern):
            alpha = value
    return (None if alpha is None else float(alpha)), bool(config.get(f"{component}.use_rslora"))
