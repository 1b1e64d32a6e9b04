"""Resizing latents as `torch.nn.functional.interpolate` does (align_corners=False), in NumPy:
the modes A1111's latent upscalers name. Each axis is one weight matrix [out, in], applied
separably (height, then width), in float32 like the reference."""

from __future__ import annotations

import numpy as np

#: Cubic convolution coefficients: torch's bicubic (-0.75) and its antialiased bicubic (-0.5, PIL's).
CUBIC_A, CUBIC_A_ANTIALIAS = -0.75, -0.5
BILINEAR_SUPPORT, BICUBIC_SUPPORT = 1.0, 2.0
LATENT_MODES = ("nearest", "nearest-exact", "bilinear", "bilinear-antialias", "bicubic", "bicubic-antialias")
AREA = "area"  # also taken (ComfyUI's upscale nodes name it), not an A1111 latent upscaler


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def _nearest(size_in: int, size_out: int, exact: bool) -> np.ndarray:
    scale = size_in / size_out
    offset = 0.5 if exact else 0.0
    source = np.minimum(np.floor((np.arange(size_out) + offset) * scale).astype(np.int64), size_in - 1)
    weights = np.zeros((size_out, size_in), dtype=np.float64)
    weights[np.arange(size_out), source] = 1
    return weights


def _bilinear(size_in: int, size_out: int) -> np.ndarray:
    scale = size_in / size_out
    source = np.maximum((np.arange(size_out) + 0.5) * scale - 0.5, 0.0)
    low = np.minimum(np.floor(source).astype(np.int64), size_in - 1)
    high = np.minimum(low + 1, size_in - 1)
    fraction = source - low
    weights = np.zeros((size_out, size_in), dtype=np.float64)
    rows = np.arange(size_out)
    np.add.at(weights, (rows, low), 1 - fraction)
    np.add.at(weights, (rows, high), fraction)
    return weights


def _bicubic(size_in: int, size_out: int) -> np.ndarray:
    scale = size_in / size_out
    source = (np.arange(size_out) + 0.5) * scale - 0.5
    base = np.floor(source).astype(np.int64)
    fraction = source - base
    weights = np.zeros((size_out, size_in), dtype=np.float64)
    rows = np.arange(size_out)
    for tap in range(-1, 3):
        np.add.at(weights, (rows, np.clip(base + tap, 0, size_in - 1)), _cubic(fraction - tap, CUBIC_A))
    return weights


def _area(size_in: int, size_out: int) -> np.ndarray:
    """torch's mode="area" (adaptive average pooling): output i averages inputs
    floor(i * in / out) to ceil((i + 1) * in / out)."""
    weights = np.zeros((size_out, size_in), dtype=np.float64)
    for row in range(size_out):
        first, last = (row * size_in) // size_out, -((-(row + 1) * size_in) // size_out)
        weights[row, first:last] = 1 / (last - first)
    return weights


def _antialiased(size_in: int, size_out: int, support: float, kernel) -> np.ndarray:
    """torch's antialias=True: the kernel widened by the downscale factor, taps normalized."""
    scale = size_in / size_out
    stretch = max(scale, 1.0)
    reach = support * stretch
    weights = np.zeros((size_out, size_in), dtype=np.float64)
    for row in range(size_out):
        center = scale * (row + 0.5)
        first, last = max(int(center - reach + 0.5), 0), min(int(center + reach + 0.5), size_in)
        taps = np.arange(first, last)
        values = kernel((taps - center + 0.5) / stretch)
        total = values.sum()
        weights[row, first:last] = values / total if total else 0
    return weights


def axis_weights(mode: str, size_in: int, size_out: int) -> np.ndarray:
    if mode in ("nearest", "nearest-exact"):
        return _nearest(size_in, size_out, exact=mode == "nearest-exact")
    if mode == "bilinear":
        return _bilinear(size_in, size_out)
    if mode == "bicubic":
        return _bicubic(size_in, size_out)
    if mode == AREA:
        return _area(size_in, size_out)
    if mode == "bilinear-antialias":
        return _antialiased(size_in, size_out, BILINEAR_SUPPORT, lambda x: np.maximum(1 - np.abs(x), 0.0))
    if mode == "bicubic-antialias":
        return _antialiased(size_in, size_out, BICUBIC_SUPPORT, lambda x: _cubic(x, CUBIC_A_ANTIALIAS))
    raise ValueError(f"unknown resampling mode {mode!r}; choose one of {', '.join((*LATENT_MODES, AREA))}")


def resize_latents(latents: np.ndarray, height: int, width: int, mode: str) -> np.ndarray:
    """[batch, channels, h, w] -> [batch, channels, height, width]."""
    rows = axis_weights(mode, latents.shape[2], height).astype(np.float32)
    cols = axis_weights(mode, latents.shape[3], width).astype(np.float32)
    out = np.einsum("oh,bchw->bcow", rows, latents.astype(np.float32))
    return np.einsum("pw,bcow->bcop", cols, out).astype(np.float32)


__all__ = ["LATENT_MODES", "axis_weights", "resize_latents"]
