"""LoRA files, read without torch, into low-rank layers named as their file names them.

Formats (each key is a layer name, a part prefix and a tensor suffix):
- kohya / A1111 (`lora_unet_...`, `lora_te_...`, SDXL `lora_te1_` / `lora_te2_`): layer names
  flattened with underscores (diffusers module paths, or LDM ones for SDXL UNets), tensors
  `lora_down.weight`, `lora_up.weight` and a scalar `alpha`; LoCon layers are convolutions.
- diffusers / PEFT (`unet.`, `transformer.`, `text_encoder.`, `text_encoder_2.` and dotted module paths):
  `lora_A.weight` / `lora_B.weight` (`base_layer` stripped), alpha and rank from the
  `lora_adapter_metadata` entry of the file's metadata; diffusers' older `lora.down/up.weight`
  and `processor.to_q_lora.down.weight` layouts too.
- ComfyUI's `diffusion_model.` + dotted module paths (Z-Image's community files): the denoiser's
  layers, a transformer's where the model has no UNet (sdrt.runtime.features.lora.merge).
FLUX.1's community formats (kohya, XLabs, BFL naming) are renamed to diffusers' first
(sdrt.runtime.features.lora.flux_formats), FLUX.2's by the model's own BFL table
(flux2_formats). Tensors of other network types (LoHa `hada_`, LoKr `lokr_`, DoRA, Tucker
`lora_mid`) are not merged: they are reported with the keys nothing uses.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sdrt.runtime.features.lora.flux_formats import FLUX1, BflLayout, to_diffusers_names
from sdrt.runtime.features.lora.weights_map import LoraError
from sdrt.runtime.files.safetensors_files import SafetensorsError, read_safetensors, tensor_data_sha256
from sdrt.runtime.files.torch_files import TorchFileError, load_torch_file
from sdrt.runtime.files.user_files import MAX_LORA_BYTES, display_name, is_regular, open_regular
from sdrt.runtime.manifest import TRANSFORMER, UNET

SUFFIXES = (".safetensors", ".pt", ".ckpt", ".bin")
SHORT_HASH = 12  # hex digits A1111 records
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"
#: Key prefix -> the component its layers belong to (the manifest's names; merge.py gives a
#: transformer export the UNet prefixes' layers), and whether names are kohya-flattened.
PART_PREFIXES = (
    ("lora_unet_", UNET, True),
    ("lora_te1_", "text_encoder", True),
    ("lora_te2_", "text_encoder_2", True),
    ("lora_te_", "text_encoder", True),
    ("unet.", UNET, False),
    ("transformer.", TRANSFORMER, False),
    ("text_encoder_2.", "text_encoder_2", False),
    ("text_encoder.", "text_encoder", False),
    ("base_model.model.", UNET, False),
    ("diffusion_model.", UNET, False),  # ComfyUI's denoiser prefix (the non-FLUX files)
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
HASH_BLOCK_BYTES = 1 << 20
#: A factor is a matrix (rank x in, out x rank) or a convolution kernel (rank x in x kh x kw).
FACTOR_DIMS = (2, 4)


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


def read_lora(
    path: str | Path, name: str | None = None, label: str | None = None, layout: BflLayout = FLUX1
) -> LoraFile:
    """A LoRA file; `label` names it in errors (a server gives the name its client sent, never
    the server's path); default: the path. `layout`: the model's BFL layer names, which a
    kohya / ai-toolkit file uses (FLUX.1's unless the family says otherwise)."""
    path = Path(path)
    shown = display_name(path, label)
    if not path.exists():
        raise LoraError(f"LoRA file {shown} does not exist")
    if path.suffix.lower() not in SUFFIXES:
        raise LoraError(f"{shown} is not a LoRA file ({', '.join(SUFFIXES)})")
    try:
        if path.suffix.lower() == ".safetensors":
            tensors, metadata = read_safetensors(path, MAX_LORA_BYTES, label)
            sha256 = tensor_data_sha256(path, label)
        else:
            tensors, metadata = load_torch_file(path, MAX_LORA_BYTES, label), {}
            sha256 = _file_sha256(path, label)
    except (SafetensorsError, TorchFileError) as error:
        raise LoraError(str(error)) from None
    if not isinstance(tensors, dict) or not all(isinstance(v, np.ndarray) for v in tensors.values()):
        raise LoraError(f"{shown} is not a LoRA: it holds no plain mapping of tensors")
    layers, ignored = _layers(to_diffusers_names(tensors, layout), _peft_config(metadata, shown), shown)
    if not layers:
        raise LoraError(
            f"{shown} is not a LoRA: none of its {len(tensors)} keys is a LoRA layer "
            f"(first keys: {', '.join(str(key)[:80] for key in list(tensors)[:3])})"
        )
    return LoraFile(
        path, name or path.stem, sha256[:SHORT_HASH], sha256, layers, ignored, metadata.get("ss_base_model_version", "")
    )


def is_lora_file(path: Path) -> bool:
    """A regular file with a LoRA suffix (what a LoRA folder lists)."""
    return path.suffix.lower() in SUFFIXES and is_regular(path)


def _file_sha256(path: Path, label: str | None) -> str:
    digest = hashlib.sha256()
    with open_regular(path, MAX_LORA_BYTES, LoraError, label) as handle:
        while block := handle.read(HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def _peft_config(metadata: dict[str, str], shown: str) -> dict:
    raw = metadata.get(DIFFUSERS_METADATA_KEY)
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except (ValueError, RecursionError):
        raise LoraError(f"{shown}: its {DIFFUSERS_METADATA_KEY} metadata is not JSON") from None
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


def _factor(value: np.ndarray, shown: str, key: str) -> np.ndarray:
    """A down or up factor, checked to be a finite float matrix or kernel with no empty side."""
    if value.ndim not in FACTOR_DIMS or not np.issubdtype(value.dtype, np.floating) or 0 in value.shape:
        raise LoraError(
            f"LoRA {shown}: {key} is a {value.dtype} tensor of shape {list(value.shape)}, not a factor "
            "(a matrix or a convolution kernel of numbers, no side empty)"
        )
    if not np.isfinite(value).all():
        raise LoraError(f"LoRA {shown}: {key} holds NaN or infinite values")
    return value


def _alpha(value, shown: str, key: str) -> float:
    """A layer's alpha: one finite number (a tensor of one element, or a number in metadata)."""
    if isinstance(value, np.ndarray) and value.size == 1 and np.issubdtype(value.dtype, np.number):
        number = float(value.reshape(-1)[0])
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        what = f"a tensor of shape {list(value.shape)}" if isinstance(value, np.ndarray) else repr(value)[:60]
        raise LoraError(f"LoRA {shown}: {key} must be one number, not {what}")
    if not np.isfinite(number):
        raise LoraError(f"LoRA {shown}: {key} is {number}, not a finite number")
    return number


def _layers(tensors: dict[str, np.ndarray], peft: dict, shown: str) -> tuple[list[LoraLayer], list[str]]:
    layers: dict[tuple[str, str], LoraLayer] = {}
    ignored = []
    for key, value in tensors.items():
        split = _split(str(key))
        if split is None:
            ignored.append(str(key))
            continue
        component, name, factor, flattened = split
        layer = layers.setdefault((component, name), LoraLayer(component, name))
        layer.keys.append(key)
        if factor == "alpha":
            layer.alpha = _alpha(value, shown, key)
        else:
            setattr(layer, factor, _factor(value, shown, key))
        if not flattened and layer.alpha is None:
            layer.alpha, layer.rank_stabilized = _peft_alpha(peft, component, name, shown)
    complete = []
    for layer in layers.values():
        if layer.down is None or layer.up is None:
            ignored.extend(layer.keys)  # half a layer: nothing to merge
            continue
        if layer.up.shape[1] != layer.rank:
            raise LoraError(
                f"LoRA {shown}: layer {layer.name}: up {list(layer.up.shape)} does not follow down "
                f"{list(layer.down.shape)} (rank {layer.rank}); the file is damaged"
            )
        complete.append(layer)
    return complete, ignored


def _peft_alpha(config: dict, component: str, name: str, shown: str) -> tuple[float | None, bool]:
    """(lora_alpha, rsLoRA) for a layer from diffusers' metadata, its alpha_pattern first."""
    key = f"{component}.lora_alpha"
    alpha = config.get(key)
    patterns = config.get(f"{component}.alpha_pattern") or {}
    if not isinstance(patterns, dict):
        raise LoraError(f"LoRA {shown}: {DIFFUSERS_METADATA_KEY} {component}.alpha_pattern must be an object")
    for pattern, value in patterns.items():
        if name == pattern or name.endswith("." + pattern):
            alpha, key = value, f"{component}.alpha_pattern {pattern}"
    if alpha is not None:
        alpha = _alpha(alpha, shown, f"{DIFFUSERS_METADATA_KEY} {key}")
    return alpha, bool(config.get(f"{component}.use_rslora"))
