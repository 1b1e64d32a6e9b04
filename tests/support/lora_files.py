"""Random LoRA files in the formats people download, written from a diffusers pipeline's own
module names (with torch, independently of sdrt's reader): kohya (SD 1.x diffusers names, SDXL
LDM names), LoCon (kohya with convolution layers) and diffusers/PEFT."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

RANK = 4
ALPHA = 2.0
SPREAD = 0.3  # factor scale: large enough to change a tiny model's image visibly
ATTENTION = re.compile(
    r"attentions\.\d+\.(proj_in|proj_out|transformer_blocks\.\d+\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)"
    r"|ff\.net\.(0\.proj|2)))$"
)
TEXT = re.compile(r"layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$")
CONV = re.compile(r"resnets\.\d+\.(conv1|conv2|conv_shortcut|time_emb_proj)$")


def _factors(weight: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    out, inner = weight.shape[0], weight.shape[1]
    if weight.ndim == 2:
        return (
            torch.randn(RANK, inner, generator=generator) * SPREAD,
            torch.randn(out, RANK, generator=generator) * SPREAD,
        )
    return (
        torch.randn(RANK, inner, *weight.shape[2:], generator=generator) * SPREAD,
        torch.randn(out, RANK, 1, 1, generator=generator) * SPREAD,
    )


def _layers(model, pattern: re.Pattern):
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and pattern.search(name):
            yield name, module


def _text_name(name: str) -> str:
    return name if name.startswith("text_model.") else "text_model." + name


def kohya_lora(pipeline, path: Path, seed: int, conv: bool = False, ldm_names: bool = False) -> Path:
    """kohya's layout: lora_unet_* / lora_te_* (SDXL: lora_te1_* / lora_te2_*), flattened names."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}

    def add(prefix: str, module):
        down, up = _factors(module.weight, generator)
        tensors[f"{prefix}.lora_down.weight"], tensors[f"{prefix}.lora_up.weight"] = down, up
        tensors[f"{prefix}.alpha"] = torch.tensor(ALPHA)

    unet_patterns = [ATTENTION] + ([CONV] if conv else [])
    for pattern in unet_patterns:
        for name, module in _layers(pipeline.unet, pattern):
            add("lora_unet_" + (_ldm(name, pipeline.unet.config) if ldm_names else name).replace(".", "_"), module)
    encoders = [("text_encoder", "lora_te1_" if ldm_names else "lora_te_"), ("text_encoder_2", "lora_te2_")]
    for attribute, prefix in encoders:
        encoder = getattr(pipeline, attribute, None)
        if encoder is not None:
            for name, module in _layers(encoder, TEXT):
                add(prefix + _text_name(name).replace(".", "_"), module)
    save_file(tensors, str(path), metadata={"ss_network_module": "networks.lora"})
    return path


def _ldm(name: str, config) -> str:
    from sdrt.export.ldm_checkpoint import unet_key

    with_attention = {i for i, kind in enumerate(config.up_block_types) if "CrossAttn" in kind}
    return unet_key(name + ".weight", config.layers_per_block, with_attention)[: -len(".weight")]


def peft_lora(pipeline, path: Path, seed: int, alpha: float = ALPHA) -> Path:
    """diffusers' save_lora_weights layout: unet./text_encoder. + lora_A/lora_B, alpha in metadata."""
    generator = torch.Generator().manual_seed(seed)
    tensors, config = {}, {}
    for part, model, pattern in (("unet", pipeline.unet, ATTENTION), ("text_encoder", pipeline.text_encoder, TEXT)):
        targets = []
        for name, module in _layers(model, pattern):
            down, up = _factors(module.weight, generator)
            key = f"{part}.{_text_name(name) if part != 'unet' else name}"
            tensors[f"{key}.lora_A.weight"], tensors[f"{key}.lora_B.weight"] = down, up
            targets.append(name)
        config.update({f"{part}.r": RANK, f"{part}.lora_alpha": alpha, f"{part}.target_modules": targets})
    save_file(tensors, str(path), metadata={"format": "pt", "lora_adapter_metadata": json.dumps(config)})
    return path
