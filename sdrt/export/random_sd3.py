"""Random-weight Stable Diffusion 3 / 3.5 pipelines in the diffusers folder layout, tiny enough
to build and run in seconds.

They keep SD3's structure: CLIP-L and CLIP-G with projection (penultimate hidden states and
projected pooled outputs; CLIP-G wider than CLIP-L, so the join and the zero padding to T5's
width are exercised), an optional T5 encoder (`t5=False`: diffusers runs the pipeline with
text_encoder_3 None and zeros in its place), an SD3Transformer2DModel shaped as SD3.5 Medium's
MMDiT-X (RMS query/key norms, a dual-attention first layer, 2x2 patches, a cropped position
table), a 16-channel VAE without quant convolutions with SD3's scaling and shift factors, and
SD3's scheduler config (a fixed shift of 3). The T5 tokenizer is sdrt.export.random_flux's.
"""

from __future__ import annotations

from pathlib import Path

from sdrt.export.random_flux import (
    DOWN_BLOCKS,
    SPIECE_MODEL,
    TINY_CLIP,
    TINY_T5,
    TINY_VAE,
    UP_BLOCKS,
    _realistic_rms_norms,
    t5_tokenizer_from_spiece,
    train_t5_spiece,
)
from sdrt.export.random_model import SD2_PAD_TOKEN, SD15_PRESET, realistic_norms, save_folder

SD3_KINDS = ("t5", "no-t5")
#: CLIP-G is wider than CLIP-L (1280 vs 768 at full size); T5 wider than both joined (4096 vs 2048).
#: Three layers each, so diffusers' clip skip 1 and 2 (hidden_states[-3], [-4]) both exist.
TINY_SD3_CLIP_L = {**TINY_CLIP, "num_hidden_layers": 3}
TINY_CLIP_G = {**TINY_SD3_CLIP_L, "hidden_size": 48, "projection_dim": 48, "num_attention_heads": 4}
TINY_SD3_T5 = {**TINY_T5, "d_model": 96}
TINY_TRANSFORMER = {
    "sample_size": 16,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 3,
    "attention_head_dim": 8,
    "num_attention_heads": 4,
    "caption_projection_dim": 32,
    "pos_embed_max_size": 24,
    "qk_norm": "rms_norm",
    "dual_attention_layers": (0,),
}
#: SD3's VAE constants: the runtime must read them from the config.
TINY_SD3_VAE = {**TINY_VAE, "scaling_factor": 1.5305, "shift_factor": 0.0609}
SCHEDULER = {"shift": 3.0}


def build_random_sd3(t5: bool = True, seed: int = 0, work: Path | None = None):
    """A tiny random StableDiffusion3Pipeline; `work` is a folder for the T5 tokenizer's files."""
    import tempfile

    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tokenizer = CLIPTokenizer.from_pretrained(SD15_PRESET / "tokenizer")
    tokenizer_2 = CLIPTokenizer.from_pretrained(SD15_PRESET / "tokenizer", pad_token=SD2_PAD_TOKEN)
    text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=len(tokenizer), **TINY_SD3_CLIP_L))
    realistic_norms(text_encoder, seed)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=len(tokenizer), **TINY_CLIP_G))
    realistic_norms(text_encoder_2, seed + 1)
    text_encoder_3 = tokenizer_3 = None
    if t5:
        work = Path(work or tempfile.mkdtemp(prefix="sdrt-t5-"))
        work.mkdir(parents=True, exist_ok=True)
        (work / SPIECE_MODEL).write_bytes(train_t5_spiece())
        tokenizer_3 = t5_tokenizer_from_spiece(work)
        text_encoder_3 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_3), **TINY_SD3_T5))
        _realistic_rms_norms(text_encoder_3, seed + 2)
    transformer = SD3Transformer2DModel(
        joint_attention_dim=TINY_SD3_T5["d_model"],
        pooled_projection_dim=TINY_SD3_CLIP_L["projection_dim"] + TINY_CLIP_G["projection_dim"],
        **TINY_TRANSFORMER,
    )
    _realistic_rms_norms(transformer, seed + 3)
    blocks = len(TINY_SD3_VAE["block_out_channels"])
    vae = AutoencoderKL(down_block_types=(DOWN_BLOCKS,) * blocks, up_block_types=(UP_BLOCKS,) * blocks, **TINY_SD3_VAE)
    _realistic_rms_norms(vae, seed + 4)
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )


def save_random_sd3(out_dir: str | Path, kind: str = "t5", seed: int = 0) -> Path:
    """A tiny random SD3 pipeline saved as a diffusers folder (`kind` "no-t5": without T5)."""
    out_dir = Path(out_dir)
    work = out_dir.with_name(out_dir.name + ".t5")
    t5 = kind == "t5"
    folder = save_folder(out_dir, lambda: build_random_sd3(t5, seed, work))
    if t5:
        (folder / "tokenizer_3" / SPIECE_MODEL).write_bytes((work / SPIECE_MODEL).read_bytes())
    return folder
