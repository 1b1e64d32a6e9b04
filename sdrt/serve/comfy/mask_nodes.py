"""ComfyUI's mask nodes (nodes.py): LoadImageMask (a channel of an input image; alpha inverted),
SetLatentNoiseMask (the mask a ComfyUI sampler blends by, sdrt.runtime.schedulers.kdiffusion.comfy)
and VAEEncodeForInpaint (the masked pixels grey, encoded, the mask grown by a few pixels)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from PIL import Image

from sdrt.runtime.imaging.resample import resize_latents
from sdrt.serve.comfy.nodes import Input, node
from sdrt.serve.comfy.sd_nodes import IMAGE, LATENT, MASK, PIXEL_MAX, VAE, vae_encode
from sdrt.serve.comfy.values import Latent, ModelHandle

CHANNELS = ["alpha", "red", "green", "blue"]
#: LoadImageMask's mask for a channel the image lacks (ComfyUI's 64 x 64 zeros).
MISSING_CHANNEL_SIZE = 64
#: VAEEncodeForInpaint's default and largest mask growth, in pixels; the grey the masked pixels get.
GROW_MASK_BY, MAX_GROW = 6, 64
MASKED_GREY = 0.5


@node(
    "LoadImageMask",
    "mask",
    {"image": Input(lambda context: context.input_names()), "channel": Input(lambda context: CHANNELS)},
    (MASK,),
)
def load_image_mask(context, image: str, channel: str):
    with Image.open(context.input_path(image)) as opened:
        rgba = opened.convert("RGBA")
    band = channel[0].upper()
    if band not in rgba.getbands():
        return (np.zeros((1, MISSING_CHANNEL_SIZE, MISSING_CHANNEL_SIZE), np.float32),)
    mask = np.asarray(rgba.getchannel(band), np.float32) / PIXEL_MAX
    return ((1.0 - mask if band == "A" else mask)[None],)


@node("SetLatentNoiseMask", "latent/inpaint", {"samples": Input(LATENT), "mask": Input(MASK)}, (LATENT,))
def set_latent_noise_mask(context, samples: Latent, mask: np.ndarray):
    return (replace(samples, noise_mask=mask.reshape(-1, 1, *mask.shape[-2:]).astype(np.float32)),)


def _grown(mask: np.ndarray, by: int) -> np.ndarray:
    """conv2d of the rounded mask with a by x by kernel of ones (padding ceil((by - 1) / 2)),
    clamped to [0, 1]: any masked pixel within the kernel masks."""
    rounded = np.round(mask)
    if by == 0:
        return rounded
    pad = math.ceil((by - 1) / 2)
    padded = np.pad(rounded, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out_h, out_w = padded.shape[2] - by + 1, padded.shape[3] - by + 1
    total = np.zeros((*mask.shape[:2], out_h, out_w), np.float32)
    for dy in range(by):
        for dx in range(by):
            total += padded[:, :, dy : dy + out_h, dx : dx + out_w]
    return np.clip(total, 0, 1)


@node(
    "VAEEncodeForInpaint",
    "latent/inpaint",
    {
        "pixels": Input(IMAGE),
        "vae": Input(VAE),
        "mask": Input(MASK),
        "grow_mask_by": Input("INT", GROW_MASK_BY, 0, MAX_GROW, 1),
    },
    (LATENT,),
)
def vae_encode_for_inpaint(context, pixels: np.ndarray, vae: ModelHandle, mask: np.ndarray, grow_mask_by: int):
    factor = vae.pipeline.manifest.vae_scale_factor
    height, width = (pixels.shape[1] // factor) * factor, (pixels.shape[2] // factor) * factor
    mask = resize_latents(mask.reshape(-1, 1, *mask.shape[-2:]), pixels.shape[1], pixels.shape[2], "bilinear")
    if (height, width) != pixels.shape[1:3]:  # ComfyUI crops to whole latents, centred
        top, left = (pixels.shape[1] % factor) // 2, (pixels.shape[2] % factor) // 2
        pixels = pixels[:, top : top + height, left : left + width]
        mask = mask[:, :, top : top + height, left : left + width]
    kept = (1.0 - np.round(mask))[:, 0, :, :, None]
    grey = (pixels - MASKED_GREY) * kept + MASKED_GREY
    (latent,) = vae_encode(context, grey.astype(np.float32), vae)
    noise_mask = np.round(_grown(mask, grow_mask_by)[:, :, :height, :width])
    return (Latent(latent.samples, noise_mask=noise_mask.astype(np.float32)),)
