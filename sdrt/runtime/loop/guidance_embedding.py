"""Latent consistency models distilled with guidance take the guidance scale as an embedding
(`timestep_cond`) instead of an unconditional batch half, as diffusers'
`LatentConsistencyModelPipeline` computes it: w = guidance - 1 (the Imagen form of
classifier-free guidance), scaled by 1000, in sinusoidal features (sines, then cosines)."""

from __future__ import annotations

import numpy as np

GUIDANCE_SCALE_FACTOR = 1000.0
MAX_PERIOD = 10000.0


def guidance_embedding(guidance_scale: float, width: int) -> np.ndarray:
    """float32 [width] for one guidance scale (float32 arithmetic, as diffusers)."""
    w = np.float32(guidance_scale - 1) * np.float32(GUIDANCE_SCALE_FACTOR)
    half = width // 2
    rate = np.log(np.float32(MAX_PERIOD)) / np.float32(half - 1)
    frequencies = np.exp(np.arange(half, dtype=np.float32) * -rate)
    angles = w * frequencies
    embedding = np.concatenate([np.sin(angles), np.cos(angles)]).astype(np.float32)
    return np.pad(embedding, (0, width % 2))
