"""Random-weight Stable Diffusion pipelines in the diffusers folder layout.

Real weights cannot be downloaded everywhere, and compute cost does not depend on their values.
So sdrt builds models from architecture configs with seeded random weights:

- `tiny` variants for tests: the real CLIP vocabulary and tokenizer, every width shrunk so a
  whole pipeline builds and runs in seconds on two cores. Three kinds: `standard` (SD 1.x),
  `inpaint` (UNet with 9 input channels) and `v_prediction` (SD 2.x style: v-prediction, pad
  token "!", linear attention projections, gelu text encoder).
- `sd15`: the full-size SD 1.5 architecture from the preset configs, for benchmarks.

Needs the export extra (torch, diffusers, transformers).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdrt.errors import ConfigError

PRESETS_DIR = Path(__file__).parent / "presets"
SD15_PRESET = PRESETS_DIR / "sd15"
KINDS = ("standard", "inpaint", "v_prediction", "lcm")
#: LCM-distilled UNets' guidance embedding width (`time_cond_proj_dim`): SD 1.5's, and a tiny one.
LCM_TIME_COND_DIM, TINY_TIME_COND_DIM = 256, 32
# Latents, plus the mask and the masked image's latents, for an inpainting UNet.
INPAINT_EXTRA_CHANNELS = 5
# SD 2.x tokenizers pad with "!" instead of the end-of-text token.
SD2_PAD_TOKEN = "!"

# Shrunk widths for the tiny test models; every other field comes from the SD 1.5 preset.
TINY_UNET = {
    "block_out_channels": [32, 64],
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "layers_per_block": 1,
    "attention_head_dim": 4,
    "cross_attention_dim": 32,
    "norm_num_groups": 16,
    "sample_size": 8,
}
TINY_VAE = {
    "block_out_channels": [16, 16, 32, 32],
    "layers_per_block": 1,
    "norm_num_groups": 16,
    "sample_size": 64,
}
TINY_TEXT_ENCODER = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "projection_dim": 32,
}


# Layer norms of trained CLIP text encoders have scales around 1 and biases that are not zero,
# so hidden states do not average to zero (A1111's emphasis rescales by that average). A fresh
# model's norms are exactly 1 and 0; random ones get these spreads, and the bias this offset.
NORM_WEIGHT_SPREAD, NORM_BIAS_SPREAD, NORM_BIAS_OFFSET = 0.1, 0.1, 0.3


def realistic_norms(text_encoder, seed: int) -> None:
    """Give every layer norm of a text encoder random, non-trivial weights and biases."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in text_encoder.modules():
            if isinstance(module, torch.nn.LayerNorm):
                shape = module.weight.shape
                module.weight.copy_(1 + NORM_WEIGHT_SPREAD * torch.randn(shape, generator=generator))
                module.bias.copy_(NORM_BIAS_OFFSET + NORM_BIAS_SPREAD * torch.randn(shape, generator=generator))


def _read_config(component: str) -> dict[str, Any]:
    with open(SD15_PRESET / component / "config.json", encoding="utf-8") as handle:
        return json.load(handle)


def _without_metadata(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if not k.startswith("_") and k != "architectures"}


def component_configs(size: str, kind: str) -> dict[str, dict[str, Any]]:
    """UNet, VAE, text encoder, scheduler and tokenizer settings of a random model."""
    if kind not in KINDS:
        raise ConfigError(f"unknown model kind {kind!r}; choose one of {', '.join(KINDS)}")
    if size not in ("tiny", "sd15"):
        raise ConfigError(f"unknown model size {size!r}; choose tiny or sd15")
    unet = _without_metadata(_read_config("unet"))
    vae = _without_metadata(_read_config("vae"))
    text = _without_metadata(_read_config("text_encoder"))
    with open(SD15_PRESET / "scheduler" / "scheduler_config.json", encoding="utf-8") as handle:
        scheduler = json.load(handle)
    if size == "tiny":
        unet.update(TINY_UNET)
        vae.update(TINY_VAE)
        text.update(TINY_TEXT_ENCODER)
        unet["cross_attention_dim"] = text["hidden_size"]
    tokenizer: dict[str, Any] = {}
    if kind == "inpaint":
        unet["in_channels"] = unet["out_channels"] + INPAINT_EXTRA_CHANNELS
    if kind == "lcm":  # a latent consistency model: guidance goes in through an embedding
        unet["time_cond_proj_dim"] = TINY_TIME_COND_DIM if size == "tiny" else LCM_TIME_COND_DIM
    if kind == "v_prediction":
        scheduler["prediction_type"] = "v_prediction"
        unet["use_linear_projection"] = True
        text["hidden_act"] = "gelu"
        tokenizer["pad_token"] = SD2_PAD_TOKEN
    return {"unet": unet, "vae": vae, "text_encoder": text, "scheduler": scheduler, "tokenizer": tokenizer}


def build_random_pipeline(size: str = "tiny", kind: str = "standard", seed: int = 0):
    """A `StableDiffusionPipeline` (or the inpainting one) with seeded random weights."""
    import torch
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionInpaintPipeline,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    configs = component_configs(size, kind)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(configs["unet"])
    vae = AutoencoderKL.from_config(configs["vae"])
    text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
    realistic_norms(text_encoder, seed)
    tokenizer = CLIPTokenizer.from_pretrained(SD15_PRESET / "tokenizer", **configs["tokenizer"])
    scheduler = PNDMScheduler.from_config(configs["scheduler"])
    pipeline_class = StableDiffusionInpaintPipeline if kind == "inpaint" else StableDiffusionPipeline
    pipeline = pipeline_class(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipeline


def save_random_pipeline(out_dir: str | Path, size: str = "tiny", kind: str = "standard", seed: int = 0) -> Path:
    """Build a random pipeline and save it as a diffusers folder."""
    return save_folder(out_dir, lambda: build_random_pipeline(size, kind, seed))


def save_folder(out_dir: str | Path, build: Callable[[], Any]) -> Path:
    """Save the pipeline `build()` makes as a diffusers folder, written aside, then renamed."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise ConfigError(f"{out_dir} already exists")
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        build().save_pretrained(staging, safe_serialization=True)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


#: A tiny ControlNet's conditioning embedding: four widths, three stride-2 convolutions, so the
#: control image is 8x the latent (the tiny VAE's factor); the full size takes diffusers' default.
TINY_CONDITIONING_EMBEDDING = (8, 8, 16, 16)
#: diffusers zero-initializes a ControlNet's output convolutions (a fresh one changes nothing);
#: random ones get weights of this spread, so tests can see what it does.
ZERO_CONVOLUTION_SPREAD = 0.05


def save_random_controlnet(
    out_dir: str | Path, model_dir: str | Path, seed: int = 0, conditioning_embedding: tuple[int, ...] | None = None
) -> Path:
    """A ControlNet with random weights for the UNet of the diffusers folder `model_dir` (SD or
    SDXL), saved as a diffusers ControlNet folder."""

    def build():
        import torch
        from diffusers import ControlNetModel, UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(Path(model_dir) / "unet")
        torch.manual_seed(seed)
        extra = (
            {} if conditioning_embedding is None else {"conditioning_embedding_out_channels": conditioning_embedding}
        )
        controlnet = ControlNetModel.from_unet(unet, load_weights_from_unet=False, **extra)
        generator = torch.Generator().manual_seed(seed)
        zeroed = [
            controlnet.controlnet_cond_embedding.conv_out,
            *controlnet.controlnet_down_blocks,
            controlnet.controlnet_mid_block,
        ]
        with torch.no_grad():
            for module in zeroed:
                for parameter in module.parameters():
                    parameter.copy_(ZERO_CONVOLUTION_SPREAD * torch.randn(parameter.shape, generator=generator))
        return controlnet

    return save_folder(out_dir, build)


#: A tiny AutoencoderTiny: TAESD's four blocks (8x) with narrow widths and one layer each.
TINY_TAESD = {
    "encoder_block_out_channels": [8, 8, 8, 8],
    "decoder_block_out_channels": [8, 8, 8, 8],
    "num_encoder_blocks": [1, 1, 1, 1],
    "num_decoder_blocks": [1, 1, 1, 1],
}


def save_random_tiny_vae(out_dir: str | Path, latent_channels: int = 4, seed: int = 0, tiny: bool = True) -> Path:
    """A random AutoencoderTiny (TAESD's architecture, or a tiny one) as a diffusers folder."""

    def build():
        import torch
        from diffusers import AutoencoderTiny

        torch.manual_seed(seed)
        return AutoencoderTiny(latent_channels=latent_channels, **(TINY_TAESD if tiny else {}))

    return save_folder(out_dir, build)
