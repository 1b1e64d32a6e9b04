"""FLUX.1 LoRA files in the community formats, renamed in NumPy to diffusers' layout
(`transformer.<module>.lora_A/lora_B.weight` and `.alpha`), as diffusers' FluxPipeline.
load_lora_weights converts them (loaders/lora_conversion_utils.py), read and rewritten here
(FLUX.2's BFL names follow the same rules with their own tables: flux2_formats.py):

- kohya / sd-scripts: `lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`, `.lora_up`,
  `.alpha`: BFL's module names flattened; ComfyUI saves the same with `diffusion_model.` for
  `lora_unet_` and `text_encoders.clip_l.transformer.` for `lora_te_`;
- XLabs: `double_blocks.0.processor.qkv_lora1.down.weight` (no alpha: scale 1);
- BFL naming with PEFT factors (fal's Kontext LoRAs: `base_model.model.double_blocks.0.
  img_attn.qkv.lora_A.weight`; `diffusion_model.` too).

BFL fuses layers diffusers keeps apart: a fused layer's LoRA becomes one LoRA per diffusers
layer with the same down factor and its rows of the up factor (q, k, v in thirds; a single
block's linear1 in q, k, v of the block's width and the MLP's rest), which gives the same
delta as splitting the fused delta. Keys of other models are passed through unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

TRANSFORMER_PREFIX = "transformer."
#: Prefixes a FLUX-native key starts with; the rest is a BFL module path, dotted or flattened.
NATIVE_PREFIXES = ("lora_unet_", "diffusion_model.", "base_model.model.", "")
#: ComfyUI's CLIP-L prefix, kohya's `lora_te_` (diffusers renames it so too).
COMFY_CLIP_PREFIX, KOHYA_TEXT_PREFIX = "text_encoders.clip_l.transformer.", "lora_te_"
#: Factor suffixes of the native formats -> diffusers'.
FACTORS = (
    (".lora_down.weight", ".lora_A.weight"),
    (".lora_up.weight", ".lora_B.weight"),
    (".lora_A.weight", ".lora_A.weight"),
    (".lora_B.weight", ".lora_B.weight"),
    (".down.weight", ".lora_A.weight"),
    (".up.weight", ".lora_B.weight"),
    (".alpha", ".alpha"),
)
BLOCK = re.compile(r"(?P<kind>double_blocks|single_blocks)_(?P<index>\d+)_(?P<layer>.+)")
QKV = ("attn.to_q", "attn.to_k", "attn.to_v")
ADDED_QKV = ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")
#: A double block's layers (flattened BFL names, XLabs' processor names) -> diffusers' modules.
DOUBLE = {
    "img_attn_proj": ("attn.to_out.0",),
    "img_attn_qkv": QKV,
    "img_mlp_0": ("ff.net.0.proj",),
    "img_mlp_2": ("ff.net.2",),
    "img_mod_lin": ("norm1.linear",),
    "txt_attn_proj": ("attn.to_add_out",),
    "txt_attn_qkv": ADDED_QKV,
    "txt_mlp_0": ("ff_context.net.0.proj",),
    "txt_mlp_2": ("ff_context.net.2",),
    "txt_mod_lin": ("norm1_context.linear",),
    "processor_proj_lora1": ("attn.to_out.0",),
    "processor_proj_lora2": ("attn.to_add_out",),
    "processor_qkv_lora1": QKV,
    "processor_qkv_lora2": ADDED_QKV,
}
#: linear1 of a single block is q, k, v (each the block's width, its input's) and the MLP.
LINEAR1 = (*QKV, "proj_mlp")
SINGLE = {
    "linear1": LINEAR1,
    "linear2": ("proj_out",),
    "modulation_lin": ("norm.linear",),
    "processor_qkv_lora": QKV,
    "processor_proj_lora": ("proj_out",),
}
#: Layers outside the blocks (flattened BFL names). diffusers 0.42 converts kohya's but then
#: drops them (its converted keys lack the `transformer.` prefix it loads); sdrt merges them,
#: with their alpha, as kohya's and ComfyUI's loaders do.
OUTER = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in_in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in_out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in_in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in_out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in_in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in_out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer_linear": "proj_out",
    "final_layer_adaLN_modulation_1": "norm_out.linear",
}
#: BFL's final modulation is (shift, scale); diffusers' norm_out.linear is (scale, shift).
SWAPPED = "final_layer_adaLN_modulation_1"


@dataclass(frozen=True)
class BflLayout:
    """One model's BFL layer names (flattened) -> diffusers' modules: a double block's, a single
    block's, the layers outside the blocks, and the outer layers whose up rows BFL keeps as
    (shift, scale) where diffusers' module has (scale, shift)."""

    name: str
    double: dict[str, tuple[str, ...]]
    single: dict[str, tuple[str, ...]]
    outer: dict[str, str]
    swapped: frozenset[str] = frozenset()


FLUX1 = BflLayout("flux1", DOUBLE, SINGLE, OUTER, frozenset({SWAPPED}))


def _native(key: str, layout: BflLayout = FLUX1) -> tuple[str, str] | None:
    """(flattened BFL layer name, diffusers factor suffix) of a FLUX-native key, or None."""
    for suffix, factor in FACTORS:  # noqa: B007 (the matching suffix's factor is used after the loop)
        if key.endswith(suffix):
            stem = key[: -len(suffix)]
            break
    else:
        return None
    for prefix in NATIVE_PREFIXES:
        if stem.startswith(prefix):
            name = stem[len(prefix) :].replace(".", "_")
            if BLOCK.fullmatch(name) or name in layout.outer:
                return name, factor
    return None


def _targets(name: str, layout: BflLayout) -> tuple[str, ...] | None:
    """The diffusers modules a flattened BFL layer name stands for, or None."""
    if name in layout.outer:
        return (layout.outer[name],)
    match = BLOCK.fullmatch(name)
    if match is None:
        return None
    table, block = (
        (layout.double, "transformer_blocks")
        if match["kind"] == "double_blocks"
        else (layout.single, "single_transformer_blocks")
    )
    modules = table.get(match["layer"])
    return None if modules is None else tuple(f"{block}.{match['index']}.{module}" for module in modules)


def _rows(modules: tuple[str, ...], up: np.ndarray, down: np.ndarray) -> list[np.ndarray]:
    """The up factor's rows of each module (equal parts; linear1: the input's width for each
    of q, k, v, the rest for the MLP)."""
    parts = len(modules)
    if parts == 1:
        return [up]
    if modules[-1].endswith(LINEAR1[-1]):
        width = down.shape[1]
        sizes = [width] * (parts - 1) + [up.shape[0] - width * (parts - 1)]
    else:
        sizes = [up.shape[0] // parts] * parts
    if min(sizes) <= 0 or sum(sizes) != up.shape[0]:
        return []  # not a FLUX layer's shape: left whole, reported as unmatched
    return np.split(up, np.cumsum(sizes)[:-1], axis=0)


def is_flux_native(tensors: dict[str, np.ndarray], layout: BflLayout = FLUX1) -> bool:
    return any(_native(str(key), layout) is not None for key in tensors)


def to_diffusers_names(tensors: dict[str, np.ndarray], layout: BflLayout = FLUX1) -> dict[str, np.ndarray]:
    """The file's tensors with its BFL-named layers (FLUX.1's, or `layout`'s) renamed (and fused
    layers split) to diffusers' layout; a file with none is returned as it is."""
    if not is_flux_native(tensors, layout):
        return tensors
    layers: dict[str, dict[str, np.ndarray]] = {}
    origin: dict[str, list] = {}  # layer -> its keys in the file
    converted: dict[str, np.ndarray] = {}
    for key, value in tensors.items():
        native = _native(str(key), layout)
        if native is None:
            converted[_clip_key(str(key))] = value
            continue
        name, factor = native
        layers.setdefault(name, {})[factor] = value
        origin.setdefault(name, []).append(key)
    for name, factors in layers.items():
        modules = _targets(name, layout)
        down, up = factors.get(".lora_A.weight"), factors.get(".lora_B.weight")
        rows = [] if modules is None or down is None or up is None or up.ndim != 2 else _rows(modules, up, down)
        if name in layout.swapped and rows and rows[0].shape[0] % 2 == 0:
            shift, scale = np.split(rows[0], 2, axis=0)
            rows = [np.concatenate([scale, shift], axis=0)]
        elif name in layout.swapped:
            rows = []
        if modules is None or down is None or not rows:
            converted.update({str(key): tensors[key] for key in origin[name]})  # reported as unmatched
            continue
        for module, part in zip(modules, rows):
            stem = TRANSFORMER_PREFIX + module
            converted[stem + ".lora_A.weight"], converted[stem + ".lora_B.weight"] = down, part
            if ".alpha" in factors:
                converted[stem + ".alpha"] = factors[".alpha"]
    return converted


def _clip_key(key: str) -> str:
    """ComfyUI's CLIP-L key in kohya's naming (what diffusers renames it to)."""
    if not key.startswith(COMFY_CLIP_PREFIX):
        return key
    rest = key[len(COMFY_CLIP_PREFIX) :]
    for suffix, _ in FACTORS:
        if rest.endswith(suffix):
            return KOHYA_TEXT_PREFIX + rest[: -len(suffix)].replace(".", "_") + suffix
    return key
