"""Random-weight FLUX.1 pipelines (dev: guidance-distilled; schnell: no guidance input) in the
diffusers folder layout, tiny enough to build and run in seconds.

They keep FLUX's structure: CLIP-L's pooled output and a T5 encoder as the text, a
FluxTransformer2DModel (double- and single-stream blocks, RoPE over 3 axes, the guidance
embedding for dev) on 2x2-packed latents, a 16-channel VAE without quant convolutions whose
config carries a scaling and a shift factor, and FLUX.1-dev's scheduler config (dynamic
shifting). The CLIP tokenizer is the real one; the T5 tokenizer is a SentencePiece unigram
model trained here on a small corpus (T5's special ids: pad 0, eos 1, unk 2, and the 100
`<extra_id_N>` tokens transformers adds). Needs the export extra and `sentencepiece`.
"""

from __future__ import annotations

import io
from pathlib import Path

from sdrt.errors import ConfigError
from sdrt.export.random_model import SD15_PRESET, realistic_norms, save_folder

FLUX_KINDS = ("dev", "schnell")
#: FLUX.1's editing variants (dev-based, guidance-distilled) -> their diffusers pipeline classes.
FLUX_VARIANTS = {"fill": "FluxFillPipeline", "kontext": "FluxKontextPipeline"}
#: Packed channels: 2x2 patches of the 16 latent channels.
PACKED = 4
#: T5's special ids, as Google's T5 SentencePiece models set them (no bos).
T5_PAD_ID, T5_EOS_ID, T5_UNK_ID, T5_NO_BOS = 0, 1, 2, -1
TINY_T5_PIECES = 200
#: The corpus the tiny T5 tokenizer is trained on (repeated so every piece has counts).
CORPUS_REPEATS = 3
CORPUS = Path(__file__).resolve().parents[2] / "tests" / "data" / "prompts.txt"
FALLBACK_CORPUS = "a photograph of an astronaut riding a horse on the moon, highly detailed, 4k"

TINY_TRANSFORMER = {
    "patch_size": 1,
    "num_layers": 1,
    "num_single_layers": 2,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "axes_dims_rope": (4, 6, 6),  # sums to attention_head_dim
}
TINY_CLIP = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "projection_dim": 32,
    "hidden_act": "quick_gelu",
}
TINY_T5 = {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4, "feed_forward_proj": "gated-gelu"}
TINY_VAE = {
    "block_out_channels": [16, 16, 32, 32],
    "layers_per_block": 1,
    "norm_num_groups": 16,
    "latent_channels": 16,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    # FLUX.1's VAE constants: the runtime must read them from the config, never assume 1 and 0.
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
}
DOWN_BLOCKS, UP_BLOCKS = "DownEncoderBlock2D", "UpDecoderBlock2D"
#: FLUX.1-dev's scheduler config (schnell's sets use_dynamic_shifting false and shift 1).
SCHEDULER = {
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
SCHNELL_SCHEDULER = {"shift": 1.0, "use_dynamic_shifting": False}
#: Spread of the random scales of the transformer's and T5's RMS norms (trained ones are not 1).
RMS_WEIGHT_SPREAD = 0.1
#: Where the tiny T5 tokenizer's SentencePiece model is kept beside tokenizer.json (test references).
SPIECE_MODEL = "spiece.model"


def train_t5_spiece(pieces: int = TINY_T5_PIECES) -> bytes:
    """A SentencePiece unigram model with T5's special ids, trained on the test corpus."""
    import sentencepiece

    lines = CORPUS.read_text(encoding="utf-8").splitlines() if CORPUS.is_file() else [FALLBACK_CORPUS]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines * CORPUS_REPEATS),
        model_writer=model,
        vocab_size=pieces,
        model_type="unigram",
        pad_id=T5_PAD_ID,
        eos_id=T5_EOS_ID,
        unk_id=T5_UNK_ID,
        bos_id=T5_NO_BOS,
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return model.getvalue()


def t5_tokenizer_from_spiece(folder: Path):
    """transformers' T5TokenizerFast converted from a folder holding only spiece.model."""
    from transformers import T5TokenizerFast

    return T5TokenizerFast.from_pretrained(folder)


def _realistic_rms_norms(model, seed: int) -> None:
    """Random scales around 1 for every RMS norm (T5's and the transformer's q/k norms)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if "norm" in type(module).__name__.lower() and isinstance(weight, torch.nn.Parameter) and weight.ndim == 1:
                weight.copy_(1 + RMS_WEIGHT_SPREAD * torch.randn(weight.shape, generator=generator))
                bias = getattr(module, "bias", None)
                if isinstance(bias, torch.nn.Parameter):
                    bias.copy_(RMS_WEIGHT_SPREAD * torch.randn(bias.shape, generator=generator))


def fill_channels(kind: str) -> int:
    """FLUX.1 Fill's conditioning channels after packing: the masked image's latents and the
    mask as one channel per pixel of each VAE cell (FluxFillPipeline.prepare_mask_latents)."""
    if kind != "fill":
        return 0
    cell = 2 ** (len(TINY_VAE["block_out_channels"]) - 1)
    return (TINY_VAE["latent_channels"] + cell * cell) * PACKED


def build_random_flux(kind: str = "dev", seed: int = 0, work: Path | None = None):
    """A tiny random FluxPipeline; `work` is a folder for the T5 tokenizer's files."""
    import tempfile

    import diffusers
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel

    if kind not in FLUX_KINDS and kind not in FLUX_VARIANTS:
        raise ConfigError(f"unknown FLUX kind {kind!r}; choose one of {', '.join([*FLUX_KINDS, *FLUX_VARIANTS])}")
    work = Path(work or tempfile.mkdtemp(prefix="sdrt-t5-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / SPIECE_MODEL).write_bytes(train_t5_spiece())
    tokenizer_2 = t5_tokenizer_from_spiece(work)
    torch.manual_seed(seed)
    tokenizer = CLIPTokenizer.from_pretrained(SD15_PRESET / "tokenizer")
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), **TINY_CLIP))
    realistic_norms(text_encoder, seed)
    text_encoder_2 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_2), **TINY_T5))
    _realistic_rms_norms(text_encoder_2, seed + 1)
    latent_packed = TINY_VAE["latent_channels"] * PACKED
    transformer = FluxTransformer2DModel(
        in_channels=latent_packed + fill_channels(kind),
        out_channels=latent_packed,
        joint_attention_dim=TINY_T5["d_model"],
        pooled_projection_dim=TINY_CLIP["hidden_size"],
        guidance_embeds=kind != "schnell",
        **TINY_TRANSFORMER,
    )
    _realistic_rms_norms(transformer, seed + 2)
    blocks = len(TINY_VAE["block_out_channels"])
    vae = AutoencoderKL(down_block_types=(DOWN_BLOCKS,) * blocks, up_block_types=(UP_BLOCKS,) * blocks, **TINY_VAE)
    _realistic_rms_norms(vae, seed + 3)
    scheduler = FlowMatchEulerDiscreteScheduler(**{**SCHEDULER, **(SCHNELL_SCHEDULER if kind == "schnell" else {})})
    pipeline_class = getattr(diffusers, FLUX_VARIANTS[kind]) if kind in FLUX_VARIANTS else FluxPipeline
    return pipeline_class(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


def save_random_flux(out_dir: str | Path, kind: str = "dev", seed: int = 0) -> Path:
    """A tiny random FLUX pipeline saved as a diffusers folder; the T5 tokenizer's
    SentencePiece model is kept in tokenizer_2/ too (the export converts from it when a model
    has no tokenizer.json)."""
    out_dir = Path(out_dir)
    work = out_dir.with_name(out_dir.name + ".t5")
    folder = save_folder(out_dir, lambda: build_random_flux(kind, seed, work))
    (folder / "tokenizer_2" / SPIECE_MODEL).write_bytes((work / SPIECE_MODEL).read_bytes())
    return folder
