"""A random-weight ChromaPipeline in the diffusers folder layout, tiny enough to build and run in
seconds: FLUX's tiny T5 (with its trained SentencePiece tokenizer and realistic RMS norms) and
16-channel VAE (sdrt.export.random_flux), and a ChromaTransformer2DModel of FLUX's tiny shape
with a small approximator."""

from __future__ import annotations

import tempfile
from pathlib import Path

from sdrt.export.random_flux import (
    DOWN_BLOCKS,
    SCHEDULER,
    SPIECE_MODEL,
    TINY_T5,
    TINY_TRANSFORMER,
    TINY_VAE,
    UP_BLOCKS,
    _realistic_rms_norms,
    t5_tokenizer_from_spiece,
    train_t5_spiece,
)
from sdrt.export.random_model import save_folder

TINY_APPROXIMATOR = {"approximator_num_channels": 16, "approximator_hidden_dim": 32, "approximator_layers": 2}


def build_random_chroma(seed: int = 0, work: Path | None = None):
    import torch
    from diffusers import AutoencoderKL, ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler
    from transformers import T5Config, T5EncoderModel

    work = Path(work or tempfile.mkdtemp(prefix="sdrt-t5-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / SPIECE_MODEL).write_bytes(train_t5_spiece())
    tokenizer = t5_tokenizer_from_spiece(work)
    torch.manual_seed(seed)
    text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), **TINY_T5))
    _realistic_rms_norms(text_encoder, seed + 1)
    transformer = ChromaTransformer2DModel(
        in_channels=TINY_VAE["latent_channels"] * 4,
        joint_attention_dim=TINY_T5["d_model"],
        **TINY_TRANSFORMER,
        **TINY_APPROXIMATOR,
    )
    _realistic_rms_norms(transformer, seed + 2)
    blocks = len(TINY_VAE["block_out_channels"])
    vae = AutoencoderKL(down_block_types=(DOWN_BLOCKS,) * blocks, up_block_types=(UP_BLOCKS,) * blocks, **TINY_VAE)
    _realistic_rms_norms(vae, seed + 3)
    return ChromaPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )


def save_random_chroma(out_dir: str | Path, seed: int = 0) -> Path:
    out_dir = Path(out_dir)
    work = out_dir.with_name(out_dir.name + ".t5")
    folder = save_folder(out_dir, lambda: build_random_chroma(seed, work))
    (folder / "tokenizer" / SPIECE_MODEL).write_bytes((work / SPIECE_MODEL).read_bytes())
    return folder
