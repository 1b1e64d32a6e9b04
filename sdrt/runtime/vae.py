"""The VAE's two directions, as diffusers' pipelines use them: an image to scaled latents sampled
from the encoder's distribution, and latents back to pixels in [0, 1]."""

from __future__ import annotations

import numpy as np

from sdrt.errors import GenerationError
from sdrt.runtime.engines import Engine
from sdrt.runtime.manifest import BATCH, TINY_VAE_DECODER, TINY_VAE_ENCODER, Manifest
from sdrt.runtime.rng import TorchGenerator

#: The VAEs a request picks with `vae` -> their decoder and encoder components.
DECODERS = {"full": "vae_decoder", "tiny": TINY_VAE_DECODER}
ENCODERS = {"full": "vae_encoder", "tiny": TINY_VAE_ENCODER}
DEFAULT_DECODER = "full"


def latent_scaling(manifest: Manifest, decoder: str) -> tuple[float, float]:
    """(scaling factor, shift factor) of a decoder's latents."""
    if DECODERS[decoder] == TINY_VAE_DECODER:
        return manifest.tiny_vae.scaling_factor, manifest.tiny_vae.shift_factor
    return manifest.vae_scaling_factor, manifest.vae_shift_factor


def encode(
    engine: Engine, manifest: Manifest, image: np.ndarray, generator: TorchGenerator, vae: str = DEFAULT_DECODER
) -> np.ndarray:
    """Latents of an image in [-1, 1] scaled as the UNet expects: sampled with `generator` from
    the full VAE's distribution, or the tiny VAE's (deterministic, nothing drawn)."""
    out = engine.run({"sample": image.astype(engine.input_dtype("sample"))})
    if "latents" in out:
        latents = out["latents"].astype(np.float32)
    else:
        mean, std = out["latent_mean"].astype(np.float32), out["latent_std"].astype(np.float32)
        latents = mean + std * generator.randn(mean.shape)
    scaling, shift = latent_scaling(manifest, vae)
    return (latents - np.float32(shift)) * np.float32(scaling)


def decode(engine: Engine, manifest: Manifest, latents: np.ndarray, decoder: str = DEFAULT_DECODER) -> np.ndarray:
    """Images as float32 [batch, height, width, 3] in [0, 1], decoded by `decoder` (its engine
    given) in chunks of the export's batch limit. NaN or infinite pixels (an fp16 VAE's
    overflow) are an error, never a black image."""
    if not np.isfinite(latents).all():  # the denoiser's, not the VAE's: say which stage
        raise GenerationError(
            "the denoiser produced NaN or infinite latents (before the VAE): the prompt's emphasis weights, a "
            "LoRA's weight or the guidance scale may be too large, or the engines' precision too low (fp16)"
        )
    scaling, shift = latent_scaling(manifest, decoder)
    scaled = latents / np.float32(scaling) + np.float32(shift)
    limit = manifest.dims[BATCH].max if BATCH in manifest.dims else len(scaled)
    dtype = engine.input_dtype("latent_sample")
    with np.errstate(over="ignore"):  # latents past fp16's range: inf, reported just below
        chunks = [
            engine.run({"latent_sample": scaled[i : i + limit].astype(dtype)})["sample"]
            for i in range(0, len(scaled), limit)
        ]
    image = np.concatenate(chunks).astype(np.float32)
    if not np.isfinite(image).all():
        raise GenerationError(
            "the VAE decoded NaN or infinite values (the fp16 VAE overflows): re-export with --vae-precision fp32"
        )
    return np.clip(image / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)
