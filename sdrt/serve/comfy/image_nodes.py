"""ComfyUI's resampling nodes (nodes.py: LatentUpscale, LatentUpscaleBy, ImageScale,
ImageScaleBy) on comfy.utils.common_upscale's rule: an optional centre crop to the target's
aspect ratio, then torch's interpolate (sdrt.runtime.imaging.resample, in NumPy).

The latents here are sdrt's (scaled by the VAE's factor); resampling is linear, so it gives
ComfyUI's raw-space result scaled the same way."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from sdrt.runtime.imaging.resample import resize_latents
from sdrt.serve.comfy.nodes import MAX_RESOLUTION, SIZE_STEP, Input, node
from sdrt.serve.comfy.values import Latent

LATENT, IMAGE = "LATENT", "IMAGE"
#: ComfyUI's methods that are torch interpolate modes (its "bislerp" and "lanczos" are not run).
METHODS = ["nearest-exact", "bilinear", "area", "bicubic"]
CROPS = ["disabled", "center"]
#: LatentUpscale's smallest side in pixels, and the pixels per latent (its width // 8).
MIN_LATENT_UPSCALE = 64
PIXELS_PER_LATENT = 8
MAX_SCALE, DEFAULT_LATENT_SCALE = 8.0, 1.5


def common_upscale(samples: np.ndarray, width: int, height: int, method: str, crop: str) -> np.ndarray:
    """[batch, channels, h, w] resized to [batch, channels, height, width] as ComfyUI does."""
    if crop == "center":
        old_height, old_width = samples.shape[-2:]
        old_aspect, new_aspect = old_width / old_height, width / height
        x = y = 0
        if old_aspect > new_aspect:
            x = round((old_width - old_width * (new_aspect / old_aspect)) / 2)
        elif old_aspect < new_aspect:
            y = round((old_height - old_height * (old_aspect / new_aspect)) / 2)
        samples = samples[..., y : old_height - y, x : old_width - x]
    return resize_latents(samples, height, width, method)


def _methods(context) -> list[str]:
    return METHODS


def _crops(context) -> list[str]:
    return CROPS


@node(
    "LatentUpscale",
    "latent",
    {
        "samples": Input(LATENT),
        "upscale_method": Input(_methods),
        "width": Input("INT", 512, 0, MAX_RESOLUTION, SIZE_STEP),
        "height": Input("INT", 512, 0, MAX_RESOLUTION, SIZE_STEP),
        "crop": Input(_crops),
    },
    (LATENT,),
)
def latent_upscale(context, samples: Latent, upscale_method: str, width: int, height: int, crop: str):
    if width == 0 and height == 0:
        return (samples,)
    h, w = samples.samples.shape[-2:]
    if width == 0:
        height = max(MIN_LATENT_UPSCALE, height)
        width = max(MIN_LATENT_UPSCALE, round(w * height / h))
    elif height == 0:
        width = max(MIN_LATENT_UPSCALE, width)
        height = max(MIN_LATENT_UPSCALE, round(h * width / w))
    else:
        width, height = max(MIN_LATENT_UPSCALE, width), max(MIN_LATENT_UPSCALE, height)
    size = (width // PIXELS_PER_LATENT, height // PIXELS_PER_LATENT)
    return (replace(samples, samples=common_upscale(samples.samples, *size, upscale_method, crop)),)


@node(
    "LatentUpscaleBy",
    "latent",
    {
        "samples": Input(LATENT),
        "upscale_method": Input(_methods),
        "scale_by": Input("FLOAT", DEFAULT_LATENT_SCALE, 0.01, MAX_SCALE, 0.01),
    },
    (LATENT,),
)
def latent_upscale_by(context, samples: Latent, upscale_method: str, scale_by: float):
    h, w = samples.samples.shape[-2:]
    size = (round(w * scale_by), round(h * scale_by))
    return (replace(samples, samples=common_upscale(samples.samples, *size, upscale_method, "disabled")),)


def _image_scale(image: np.ndarray, width: int, height: int, method: str, crop: str) -> np.ndarray:
    planar = image.transpose(0, 3, 1, 2)
    return common_upscale(planar, width, height, method, crop).transpose(0, 2, 3, 1)


@node(
    "ImageScale",
    "image/upscaling",
    {
        "image": Input(IMAGE),
        "upscale_method": Input(_methods),
        "width": Input("INT", 512, 0, MAX_RESOLUTION, 1),
        "height": Input("INT", 512, 0, MAX_RESOLUTION, 1),
        "crop": Input(_crops),
    },
    (IMAGE,),
)
def image_scale(context, image: np.ndarray, upscale_method: str, width: int, height: int, crop: str):
    if width == 0 and height == 0:
        return (image,)
    h, w = image.shape[1:3]
    if width == 0:
        width = max(1, round(w * height / h))
    elif height == 0:
        height = max(1, round(h * width / w))
    return (_image_scale(image, width, height, upscale_method, crop),)


@node(
    "ImageScaleBy",
    "image/upscaling",
    {"image": Input(IMAGE), "upscale_method": Input(_methods), "scale_by": Input("FLOAT", 1.0, 0.01, MAX_SCALE, 0.01)},
    (IMAGE,),
)
def image_scale_by(context, image: np.ndarray, upscale_method: str, scale_by: float):
    h, w = image.shape[1:3]
    return (_image_scale(image, round(w * scale_by), round(h * scale_by), upscale_method, "disabled"),)
