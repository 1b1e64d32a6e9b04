"""A random-weight ZImagePipeline (Z-Image Turbo's structure) in the diffusers folder layout,
tiny enough to build and run in seconds: the tiny Qwen tokenizer and Qwen3 language model
(sdrt.export.random_qwen), a ZImageTransformer2DModel with refiner and main blocks, FLUX's
16-channel VAE with its scaling and shift (sdrt.export.random_flux) and Z-Image Turbo's
scheduler config."""

from __future__ import annotations

from pathlib import Path

from sdrt.export.random_flux import DOWN_BLOCKS, TINY_VAE, UP_BLOCKS, _realistic_rms_norms
from sdrt.export.random_model import save_folder
from sdrt.export.random_qwen import TINY_QWEN3, build_random_qwen3, save_qwen_tokenizer

#: head_dim 32 (dim / n_heads) = sum(axes_dims); one refiner block each for image and caption.
TINY_ZIMAGE = {
    "all_patch_size": (2,),
    "all_f_patch_size": (1,),
    "dim": 64,
    "n_layers": 2,
    "n_refiner_layers": 1,
    "n_heads": 2,
    "n_kv_heads": 2,
    "axes_dims": [8, 12, 12],
}
#: Tongyi-MAI/Z-Image-Turbo's scheduler/scheduler_config.json: a fixed shift.
ZIMAGE_TURBO_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False}
#: Spread of the random pad tokens (diffusers initializes them to zeros; random ones make the
#: pad slots' handling visible in the tests).
PAD_TOKEN_SPREAD = 0.5


def build_random_zimage(seed: int = 0, work: Path | None = None):
    import tempfile

    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import AutoTokenizer

    work = Path(work or tempfile.mkdtemp(prefix="sdrt-qwen-"))
    tokenizer = AutoTokenizer.from_pretrained(str(save_qwen_tokenizer(work)))
    text_encoder = build_random_qwen3(len(tokenizer), seed)
    torch.manual_seed(seed + 2)
    transformer = ZImageTransformer2DModel(
        in_channels=TINY_VAE["latent_channels"], cap_feat_dim=TINY_QWEN3["hidden_size"], **TINY_ZIMAGE
    )
    _realistic_rms_norms(transformer, seed + 3)
    generator = torch.Generator().manual_seed(seed + 4)
    with torch.no_grad():
        for token in (transformer.x_pad_token, transformer.cap_pad_token):
            token.copy_(PAD_TOKEN_SPREAD * torch.randn(token.shape, generator=generator))
    blocks = len(TINY_VAE["block_out_channels"])
    vae = AutoencoderKL(down_block_types=(DOWN_BLOCKS,) * blocks, up_block_types=(UP_BLOCKS,) * blocks, **TINY_VAE)
    _realistic_rms_norms(vae, seed + 5)
    return ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**ZIMAGE_TURBO_SCHEDULER),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )


def save_random_zimage(out_dir: str | Path, seed: int = 0) -> Path:
    out_dir = Path(out_dir)
    return save_folder(out_dir, lambda: build_random_zimage(seed, out_dir.with_name(out_dir.name + ".qwen")))
