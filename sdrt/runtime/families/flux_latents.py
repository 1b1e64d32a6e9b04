"""FLUX's packed latents: the loop keeps latents as [batch, channels, height, width], as every
family's (noise, image-to-image's noising and the VAE are unchanged), and the transformer's
engine sees them as 2x2 patches: [batch, (height / 2) * (width / 2), channels * 4], each patch's
channels in (channel, row, column) order, with RoPE position ids (0, patch row, patch column)
per image token and zeros per text token (FluxPipeline._pack_latents, _unpack_latents,
_prepare_latent_image_ids, text_ids). Packing is a permutation: the sampler's elementwise steps
give the same values on either layout.

A call may carry a reference image's latents (FLUX.1 Kontext, `REFERENCE_LATENTS`): their
tokens follow the image's, with position ids whose first component is 1, and the prediction
keeps the image's tokens only (FluxKontextPipeline).
"""

from __future__ import annotations

import numpy as np

from sdrt.runtime.loop.context import StepContext
from sdrt.runtime.loop.denoiser import EngineDenoiser
from sdrt.runtime.manifest import HIDDEN_STATES, IMG_IDS, TXT_IDS, UNET_CONTEXT

PATCH = 2
#: RoPE position ids: (0, row, column) for image tokens, zeros for text tokens.
POSITION_AXES = 3
ROW_AXIS, COLUMN_AXIS = 1, 2
#: The first position component: 0 for the generated image, 1 for a Kontext reference image.
IMAGE_INDEX_AXIS, REFERENCE_INDEX = 0, 1
#: The feed that carries a reference image's unpacked latents to the denoiser (not an engine input).
REFERENCE_LATENTS = "reference_latents"


def pack(latents: np.ndarray) -> np.ndarray:
    """[b, c, h, w] -> [b, (h/2)(w/2), c*4]."""
    b, c, h, w = latents.shape
    patches = latents.reshape(b, c, h // PATCH, PATCH, w // PATCH, PATCH).transpose(0, 2, 4, 1, 3, 5)
    return patches.reshape(b, (h // PATCH) * (w // PATCH), c * PATCH * PATCH)


def unpack(tokens: np.ndarray, height: int, width: int) -> np.ndarray:
    """[b, (h/2)(w/2), c*4] -> [b, c, h, w] for latents of height x width."""
    b, _, packed = tokens.shape
    c = packed // (PATCH * PATCH)
    patches = tokens.reshape(b, height // PATCH, width // PATCH, c, PATCH, PATCH).transpose(0, 3, 1, 4, 2, 5)
    return patches.reshape(b, c, height, width)


def image_ids(height: int, width: int, index: int = 0) -> np.ndarray:
    """float32 [(h/2)(w/2), 3] for latents of height x width (`index`: the first component)."""
    rows, columns = height // PATCH, width // PATCH
    ids = np.zeros((rows, columns, POSITION_AXES), np.float32)
    ids[..., IMAGE_INDEX_AXIS] = index
    ids[..., ROW_AXIS] = np.arange(rows, dtype=np.float32)[:, None]
    ids[..., COLUMN_AXIS] = np.arange(columns, dtype=np.float32)[None, :]
    return ids.reshape(rows * columns, POSITION_AXES)


def text_ids(length: int) -> np.ndarray:
    return np.zeros((length, POSITION_AXES), np.float32)


class PackedDenoiser(EngineDenoiser):
    """The FLUX transformer as a denoiser of unpacked latents: each call packs the sample, adds
    the position ids of its image and text tokens, and unpacks the prediction."""

    def run(self, ctx: StepContext, position: int, inputs: dict[str, np.ndarray]) -> np.ndarray:
        sample = inputs[self.names.sample]
        height, width = sample.shape[2], sample.shape[3]
        feeds = dict(inputs)
        tokens, ids = pack(sample), image_ids(height, width)
        reference = feeds.pop(REFERENCE_LATENTS, None)
        if reference is not None:
            tokens = np.concatenate([tokens, pack(reference).astype(tokens.dtype)], axis=1)
            ids = np.concatenate([ids, image_ids(reference.shape[2], reference.shape[3], REFERENCE_INDEX)])
        feeds[HIDDEN_STATES] = np.ascontiguousarray(tokens)
        feeds[IMG_IDS] = ids.astype(self.dtypes[IMG_IDS])
        feeds[TXT_IDS] = text_ids(inputs[UNET_CONTEXT].shape[1]).astype(self.dtypes[TXT_IDS])
        prediction = self.call_engine(ctx, position, feeds)
        return unpack(prediction[:, : (height // PATCH) * (width // PATCH)], height, width)
