"""Random-weight SDXL pipelines (base, refiner, inpainting) in the diffusers folder layout.

`tiny` models keep SDXL's structure (two CLIP text encoders, the second with its projection,
the UNet's `text_time` added conditions, a refiner that conditions on the aesthetic score and
reads the second encoder only) with every width shrunk so a pipeline builds and runs in seconds;
they use the real CLIP vocabulary. `full` is the SDXL 1.0 base architecture from the bundled
preset, for benchmarks. Needs the export extra (torch, diffusers, transformers).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sdrt.errors import ConfigError
from sdrt.export.random_model import PRESETS_DIR, SD2_PAD_TOKEN, SD15_PRESET, realistic_norms, save_folder

SDXL_PRESET = PRESETS_DIR / "sdxl"
SDXL_KINDS = ("base", "refiner", "inpaint")
SDXL_SIZES = ("tiny", "full")
# The refiner conditions on (original size, crop, aesthetic score): 5 time ids, base 6.
BASE_TIME_IDS, REFINER_TIME_IDS = 6, 5
INPAINT_EXTRA_CHANNELS = 5

TINY_UNET = {
    "block_out_channels": [32, 64],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "attention_head_dim": [2, 4],
    "transformer_layers_per_block": [1, 2],
    "addition_time_embed_dim": 8,
    "layers_per_block": 1,
    "norm_num_groups": 16,
    "sample_size": 16,
}
TINY_VAE = {"block_out_channels": [16, 16, 32, 32], "layers_per_block": 1, "norm_num_groups": 16, "sample_size": 128}
TINY_TEXT_ENCODER = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "num_hidden_layers": 3,
    "projection_dim": 32,
}
TINY_TEXT_ENCODER_2 = {
    "hidden_size": 48,
    "intermediate_size": 96,
    "num_attention_heads": 4,
    "num_hidden_layers": 3,
    "projection_dim": 40,
}


def _config(component: str) -> dict[str, Any]:
    data = json.loads((SDXL_PRESET / component / "config.json").read_text(encoding="utf-8"))
    return {k: v for k, v in data.items() if not k.startswith("_") and k != "architectures"}


def sdxl_configs(size: str, kind: str) -> dict[str, dict[str, Any]]:
    """Every component's config; the UNet's widths follow from the text encoders'."""
    if kind not in SDXL_KINDS:
        raise ConfigError(f"unknown SDXL kind {kind!r}; choose one of {', '.join(SDXL_KINDS)}")
    if size not in SDXL_SIZES:
        raise ConfigError(f"unknown SDXL size {size!r}; choose one of {', '.join(SDXL_SIZES)}")
    configs = {name: _config(name) for name in ("unet", "vae", "text_encoder", "text_encoder_2")}
    configs["scheduler"] = json.loads((SDXL_PRESET / "scheduler" / "scheduler_config.json").read_text("utf-8"))
    if size == "tiny":
        for name, shrunk in (
            ("unet", TINY_UNET),
            ("vae", TINY_VAE),
            ("text_encoder", TINY_TEXT_ENCODER),
            ("text_encoder_2", TINY_TEXT_ENCODER_2),
        ):
            configs[name].update(shrunk)
    unet, first, second = configs["unet"], configs["text_encoder"], configs["text_encoder_2"]
    time_ids = REFINER_TIME_IDS if kind == "refiner" else BASE_TIME_IDS
    unet["cross_attention_dim"] = second["hidden_size"] + (0 if kind == "refiner" else first["hidden_size"])
    unet["projection_class_embeddings_input_dim"] = (
        unet["addition_time_embed_dim"] * time_ids + second["projection_dim"]
    )
    if kind == "inpaint":
        unet["in_channels"] = unet["out_channels"] + INPAINT_EXTRA_CHANNELS
    return configs


def build_random_sdxl(size: str = "tiny", kind: str = "base", seed: int = 0):
    """A `StableDiffusionXLPipeline` (refiner: `StableDiffusionXLImg2ImgPipeline`, inpaint:
    `StableDiffusionXLInpaintPipeline`) with seeded random weights."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLInpaintPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    configs = sdxl_configs(size, kind)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(configs["unet"])
    vae = AutoencoderKL.from_config(configs["vae"])
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder_2"]))
    realistic_norms(text_encoder_2, seed)
    tokenizer_2 = CLIPTokenizer.from_pretrained(SD15_PRESET / "tokenizer", pad_token=SD2_PAD_TOKEN)
    scheduler = EulerDiscreteScheduler.from_config(configs["scheduler"])
    common = dict(
        vae=vae,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )
    if kind == "refiner":
        return StableDiffusionXLImg2ImgPipeline(
            text_encoder=None,
            tokenizer=None,
            requires_aesthetics_score=True,
            force_zeros_for_empty_prompt=False,
            **common,
        )
    text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
    realistic_norms(text_encoder, seed + 1)
    tokenizer = CLIPTokenizer.from_pretrained(SD15_PRESET / "tokenizer")
    pipeline_class = StableDiffusionXLInpaintPipeline if kind == "inpaint" else StableDiffusionXLPipeline
    return pipeline_class(text_encoder=text_encoder, tokenizer=tokenizer, **common)


def save_random_sdxl(out_dir: str | Path, size: str = "tiny", kind: str = "base", seed: int = 0) -> Path:
    """Build a random SDXL pipeline and save it as a diffusers folder."""
    return save_folder(out_dir, lambda: build_random_sdxl(size, kind, seed))
