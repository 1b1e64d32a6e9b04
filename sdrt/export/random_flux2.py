"""Random-weight FLUX.2 [klein] pipelines (`Flux2KleinPipeline`) in the diffusers folder layout,
tiny enough to build and run in seconds: distilled (few steps, no CFG) and base (real CFG).

They keep klein's structure: a Qwen3 causal LM whose hidden states at the pipeline's default
layers (9, 18, 27, so the tiny model has 27 layers) are joined as the text, the tiny Qwen
tokenizer trained here (sdrt.export.random_qwen), a Flux2Transformer2DModel (double- and
single-stream blocks, RoPE over 4 axes, no guidance embedding) on 2x2-patchified latents, and
an AutoencoderKLFlux2 with quant convolutions and a batch norm whose running statistics are
random (the pipeline normalises the patchified latents with them). Export and test time only.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from sdrt.errors import ConfigError
from sdrt.export.random_flux import SCHEDULER, _realistic_rms_norms
from sdrt.export.random_model import save_folder
from sdrt.export.random_qwen import TINY_QWEN3, save_qwen_tokenizer

KLEIN_KINDS = ("distilled", "base")
#: Flux2KleinPipeline's default text_encoder_out_layers: the tiny Qwen3 has as many layers as the last.
KLEIN_TEXT_LAYERS = (9, 18, 27)
#: The tiny Qwen3 of sdrt.export.random_qwen, deep enough for the pipeline's layers.
TINY_KLEIN_QWEN3 = {**TINY_QWEN3, "num_hidden_layers": KLEIN_TEXT_LAYERS[-1]}
TINY_FLUX2_TRANSFORMER = {
    "patch_size": 1,
    "num_layers": 1,
    "num_single_layers": 2,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "timestep_guidance_channels": 32,
    "axes_dims_rope": (4, 4, 4, 4),  # sums to attention_head_dim
    "guidance_embeds": False,
}
#: klein's VAE has 32 latent channels (128 once patchified); the tiny one 8 (32 patchified).
TINY_FLUX2_VAE = {
    "block_out_channels": (16, 16, 32, 32),
    "layers_per_block": 1,
    "norm_num_groups": 16,
    "latent_channels": 8,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
}
#: Patchified latents: 2x2 patches of the VAE's latents as channels.
PATCH_AREA = 4
#: The batch norm's random running statistics: means of this spread, variances in this range.
BN_MEAN_SPREAD, BN_VAR_RANGE = 0.5, (0.5, 2.0)
#: klein's scheduler: FLUX's, shifted dynamically (the pipeline computes mu itself).
KLEIN_SCHEDULER = {**SCHEDULER, "time_shift_type": "exponential"}


def _random_batch_norm(vae, seed: int) -> None:
    import torch

    generator = torch.Generator().manual_seed(seed)
    low, high = BN_VAR_RANGE
    with torch.no_grad():
        shape = vae.bn.running_mean.shape
        vae.bn.running_mean.copy_(BN_MEAN_SPREAD * torch.randn(shape, generator=generator))
        vae.bn.running_var.copy_(low + (high - low) * torch.rand(shape, generator=generator))


def build_random_flux2_klein(kind: str = "distilled", seed: int = 0, work: Path | None = None):
    """A tiny random Flux2KleinPipeline; `work` is a folder for the trained tokenizer."""
    import torch
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    if kind not in KLEIN_KINDS:
        raise ConfigError(f"unknown FLUX.2 klein kind {kind!r}; choose one of {', '.join(KLEIN_KINDS)}")
    work = Path(work or tempfile.mkdtemp(prefix="sdrt-qwen-"))
    tokenizer = AutoTokenizer.from_pretrained(str(save_qwen_tokenizer(work)))
    torch.manual_seed(seed)
    text_encoder = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tokenizer), **TINY_KLEIN_QWEN3))
    _realistic_rms_norms(text_encoder, seed + 1)
    vae_config = TINY_FLUX2_VAE
    transformer = Flux2Transformer2DModel(
        in_channels=vae_config["latent_channels"] * PATCH_AREA,
        joint_attention_dim=TINY_KLEIN_QWEN3["hidden_size"] * len(KLEIN_TEXT_LAYERS),
        **TINY_FLUX2_TRANSFORMER,
    )
    _realistic_rms_norms(transformer, seed + 2)
    blocks = len(vae_config["block_out_channels"])
    vae = AutoencoderKLFlux2(
        down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks, **vae_config
    )
    _realistic_rms_norms(vae, seed + 3)
    _random_batch_norm(vae, seed + 4)
    return Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**KLEIN_SCHEDULER),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        is_distilled=kind == "distilled",
    )


def save_random_flux2_klein(out_dir: str | Path, kind: str = "distilled", seed: int = 0) -> Path:
    out_dir = Path(out_dir)
    work = out_dir.with_name(out_dir.name + ".qwen")
    return save_folder(out_dir, lambda: build_random_flux2_klein(kind, seed, work))
