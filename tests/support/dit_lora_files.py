"""Random LoRA files for the diffusion transformers (FLUX.1, SD3, Chroma), written with torch
from a diffusers pipeline's own modules, independently of sdrt's reader:

- diffusers/PEFT through the pipeline class's own `save_lora_weights` (every Linear of the
  transformer, and of the CLIP encoders it names), rank and alpha in its metadata;
- FLUX.1's kohya, XLabs and BFL-named layouts, with BFL's fused layers (q, k, v as one; a single
  block's linear1 as q, k, v and the MLP) made by joining the diffusers layers' shapes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

RANK = 4
ALPHA = 2.0
SPREAD = 0.5  # factor scale: large enough to change a tiny model's image visibly
TEXT_LAYERS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")


def _pair(out: int, inner: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(RANK, inner, generator=generator) * SPREAD, torch.randn(out, RANK, generator=generator) * SPREAD


def _linears(model, keep=lambda name: True):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and keep(n)]


def _text_layer(name: str) -> bool:
    return name.endswith(TEXT_LAYERS)


def _peft_layers(model, generator, keep=lambda name: True) -> tuple[dict, dict]:
    layers = {}
    for name, module in _linears(model, keep):
        down, up = _pair(module.out_features, module.in_features, generator)
        layers[f"{name}.lora_A.weight"], layers[f"{name}.lora_B.weight"] = down, up
    metadata = {"r": RANK, "lora_alpha": ALPHA, "target_modules": sorted({n for n, _ in _linears(model, keep)})}
    return layers, metadata


def peft_lora(pipeline, path: Path, seed: int, text_encoders: tuple[str, ...] = ("text_encoder",)) -> Path:
    """The pipeline class's save_lora_weights: transformer.* (every Linear) and the CLIP
    encoders' attention and MLP layers, with lora_adapter_metadata."""
    generator = torch.Generator().manual_seed(seed)
    layers, metadata = _peft_layers(pipeline.transformer, generator)
    arguments = {"transformer_lora_layers": layers, "transformer_lora_adapter_metadata": metadata}
    for index, name in enumerate(text_encoders):
        suffix = "" if index == 0 else f"_{index + 1}"
        text, text_metadata = _peft_layers(getattr(pipeline, name), generator, _text_layer)
        arguments[f"text_encoder{suffix}_lora_layers"] = text
        arguments[f"text_encoder{suffix}_lora_adapter_metadata"] = text_metadata
    type(pipeline).save_lora_weights(path.parent, weight_name=path.name, **arguments)
    return path


# ---------------------------------------------------------------- FLUX.1's native layouts
#: BFL layer name -> the diffusers modules it joins (rows in this order), per block kind.
DOUBLE = {
    "img_attn.proj": ("attn.to_out.0",),
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "img_mlp.0": ("ff.net.0.proj",),
    "img_mlp.2": ("ff.net.2",),
    "img_mod.lin": ("norm1.linear",),
    "txt_attn.proj": ("attn.to_add_out",),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "txt_mlp.0": ("ff_context.net.0.proj",),
    "txt_mlp.2": ("ff_context.net.2",),
    "txt_mod.lin": ("norm1_context.linear",),
}
SINGLE = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation.lin": ("norm.linear",),
}
XLABS_DOUBLE = {
    "qkv_lora1": "img_attn.qkv",
    "proj_lora1": "img_attn.proj",
    "qkv_lora2": "txt_attn.qkv",
    "proj_lora2": "txt_attn.proj",
}


def bfl_layers(transformer, single: tuple[str, ...] = ("linear2", "modulation.lin")) -> dict[str, tuple[int, int]]:
    """BFL layer path -> (rows, columns) of its (fused) weight, from the diffusers modules."""
    modules = dict(transformer.named_modules())
    shapes = {}
    for kind, table, blocks, names in (
        ("double_blocks", DOUBLE, "transformer_blocks", tuple(DOUBLE)),
        ("single_blocks", SINGLE, "single_transformer_blocks", single),
    ):
        for index in range(len(getattr(transformer, blocks))):
            for name in names:
                parts = [modules[f"{blocks}.{index}.{module}"] for module in table[name]]
                shapes[f"{kind}.{index}.{name}"] = (sum(p.out_features for p in parts), parts[0].in_features)
    return shapes


def kohya_flux_lora(pipeline, path: Path, seed: int, single=("linear2", "modulation.lin"), text: bool = True) -> Path:
    """sd-scripts' FLUX layout: lora_unet_<BFL name flattened> with lora_down/lora_up/alpha, and
    CLIP-L as lora_te1_<module flattened>."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}

    def add(stem: str, out: int, inner: int):
        tensors[f"{stem}.lora_down.weight"], tensors[f"{stem}.lora_up.weight"] = _pair(out, inner, generator)
        tensors[f"{stem}.alpha"] = torch.tensor(ALPHA)

    for name, (out, inner) in bfl_layers(pipeline.transformer, single).items():
        add("lora_unet_" + name.replace(".", "_"), out, inner)
    if text:
        for name, module in _linears(pipeline.text_encoder, _text_layer):
            add("lora_te1_" + name.replace(".", "_"), module.out_features, module.in_features)
    save_file(tensors, str(path), metadata={"ss_network_module": "networks.lora_flux"})
    return path


def xlabs_flux_lora(pipeline, path: Path, seed: int) -> Path:
    """XLabs' layout: double_blocks.N.processor.{qkv,proj}_lora{1,2}.{down,up}.weight, no alpha."""
    generator = torch.Generator().manual_seed(seed)
    shapes = bfl_layers(pipeline.transformer, single=())
    tensors = {}
    for index in range(len(pipeline.transformer.transformer_blocks)):
        for processor, name in XLABS_DOUBLE.items():
            out, inner = shapes[f"double_blocks.{index}.{name}"]
            stem = f"double_blocks.{index}.processor.{processor}"
            tensors[f"{stem}.down.weight"], tensors[f"{stem}.up.weight"] = _pair(out, inner, generator)
    save_file(tensors, str(path))
    return path


def bfl_peft_lora(pipeline, path: Path, seed: int, prefix: str = "base_model.model.") -> Path:
    """BFL's layer names with PEFT factors (fal's Kontext LoRAs): <prefix><BFL name>.lora_A/B.weight."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, (out, inner) in bfl_layers(pipeline.transformer, tuple(SINGLE)).items():
        tensors[f"{prefix}{name}.lora_A.weight"], tensors[f"{prefix}{name}.lora_B.weight"] = _pair(
            out, inner, generator
        )
    save_file(tensors, str(path))
    return path


def split_to_peft(native: dict[str, torch.Tensor], transformer) -> dict[str, torch.Tensor]:
    """A BFL-named PEFT file's tensors as diffusers' transformer.* PEFT keys (the reference's
    split, written with torch: each fused layer's up rows to its modules, its down shared)."""
    modules = dict(transformer.named_modules())
    converted = {}
    for key, value in native.items():
        if not key.endswith(".lora_A.weight"):
            continue
        stem = key[: -len(".lora_A.weight")].removeprefix("base_model.model.").removeprefix("diffusion_model.")
        kind, index, name = stem.split(".", 2)
        table, blocks = (
            (DOUBLE, "transformer_blocks") if kind == "double_blocks" else (SINGLE, "single_transformer_blocks")
        )
        targets = [f"{blocks}.{index}.{module}" for module in table[name]]
        rows = [modules[target].out_features for target in targets]
        for target, up in zip(targets, torch.split(native[key.replace("lora_A", "lora_B")], rows)):
            converted[f"transformer.{target}.lora_A.weight"], converted[f"transformer.{target}.lora_B.weight"] = (
                value,
                up,
            )
    return converted


# ---------------------------------------------------------------- FLUX.2's native layouts
#: FLUX.2's BFL layer names -> Flux2Transformer2DModel's modules (rows in this order), from the
#: two models' layouts: a double block's MLPs are ff.linear_in/out, a single block's linear1 is
#: one fused module, the modulations are shared by all blocks.
FLUX2_DOUBLE = {
    "img_attn.proj": ("attn.to_out.0",),
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "img_mlp.0": ("ff.linear_in",),
    "img_mlp.2": ("ff.linear_out",),
    "txt_attn.proj": ("attn.to_add_out",),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "txt_mlp.0": ("ff_context.linear_in",),
    "txt_mlp.2": ("ff_context.linear_out",),
}
FLUX2_SINGLE = {"linear1": ("attn.to_qkv_mlp_proj",), "linear2": ("attn.to_out",)}
#: Outside the blocks: the layers diffusers' kohya converter maps, then the ones only its
#: ai-toolkit (BFL) converter maps.
FLUX2_OUTER_KOHYA = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_guidance_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_guidance_embed.timestep_embedder.linear_2",
    "final_layer.linear": "proj_out",
}
FLUX2_OUTER_BFL = {
    **FLUX2_OUTER_KOHYA,
    "final_layer.adaLN_modulation.1": "norm_out.linear",
    "single_stream_modulation.lin": "single_stream_modulation.linear",
    "double_stream_modulation_img.lin": "double_stream_modulation_img.linear",
    "double_stream_modulation_txt.lin": "double_stream_modulation_txt.linear",
}
#: Layout -> (key prefix, dotted or flattened names, down/up factor suffixes, alpha written).
FLUX2_STYLES = {
    "kohya": ("lora_unet_", False, ("lora_down", "lora_up"), True),
    "ai-toolkit": ("diffusion_model.", True, ("lora_A", "lora_B"), False),
    "peft": ("base_model.model.", True, ("lora_A", "lora_B"), False),
}


def flux2_native_lora(pipeline, path: Path, seed: int, style: str) -> Path:
    """A FLUX.2 LoRA in BFL names: kohya's (`lora_unet_double_blocks_0_img_attn_qkv.lora_down`,
    alpha), ai-toolkit's (`diffusion_model.double_blocks.0.img_attn.qkv.lora_A`) or PEFT's
    (`base_model.model.` + the same); fused weights' shapes joined from the diffusers modules."""
    prefix, dotted, (down_name, up_name), alpha = FLUX2_STYLES[style]
    transformer = pipeline.transformer
    modules = dict(transformer.named_modules())
    layers = {}
    for kind, table, blocks in (
        ("double_blocks", FLUX2_DOUBLE, "transformer_blocks"),
        ("single_blocks", FLUX2_SINGLE, "single_transformer_blocks"),
    ):
        for index in range(len(getattr(transformer, blocks))):
            for name, targets in table.items():
                layers[f"{kind}.{index}.{name}"] = [modules[f"{blocks}.{index}.{target}"] for target in targets]
    outer = FLUX2_OUTER_KOHYA if style == "kohya" else FLUX2_OUTER_BFL
    layers.update({name: [modules[target]] for name, target in outer.items()})
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, parts in layers.items():
        stem = prefix + (name if dotted else name.replace(".", "_"))
        down, up = _pair(sum(p.out_features for p in parts), parts[0].in_features, generator)
        tensors[f"{stem}.{down_name}.weight"], tensors[f"{stem}.{up_name}.weight"] = down, up
        if alpha:
            tensors[f"{stem}.alpha"] = torch.tensor(ALPHA)
    save_file(tensors, str(path))
    return path
