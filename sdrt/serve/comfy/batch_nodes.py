"""ComfyUI's latent batch nodes (nodes.py): LatentFromBatch (some images of a batch) and
RepeatLatentBatch (the batch repeated). Both record each image's `batch_index`, which a sampler's
noise follows (ComfyUI's prepare_noise with noise_inds: sdrt.runtime.rng.IndexedDraws), so an
image taken from a batch is the image it was in the batch."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from sdrt.serve.comfy.nodes import Input, node
from sdrt.serve.comfy.sd_nodes import LATENT
from sdrt.serve.comfy.values import Latent

#: LatentFromBatch's largest batch_index and length, RepeatLatentBatch's largest amount (ComfyUI's).
MAX_BATCH_INDEX, MAX_LENGTH, MAX_REPEAT = 63, 64, 64


def _masks_per_image(masks: np.ndarray, batch: int) -> np.ndarray:
    """A noise mask batch repeated to cover `batch` images (ComfyUI's masks.repeat(ceil(...)))."""
    if masks.shape[0] >= batch:
        return masks
    return np.tile(masks, (math.ceil(batch / masks.shape[0]), 1, 1, 1))[:batch]


@node(
    "LatentFromBatch",
    "latent/batch",
    {
        "samples": Input(LATENT),
        "batch_index": Input("INT", 0, 0, MAX_BATCH_INDEX),
        "length": Input("INT", 1, 1, MAX_LENGTH),
    },
    (LATENT,),
)
def latent_from_batch(context, samples: Latent, batch_index: int, length: int):
    batch = samples.samples.shape[0]
    first = min(batch - 1, batch_index)
    count = min(batch - first, length)
    taken = slice(first, first + count)
    mask = samples.noise_mask
    if mask is not None and mask.shape[0] > 1:
        mask = _masks_per_image(mask, batch)[taken]
    indices = tuple(range(first, first + count)) if samples.batch_index is None else samples.batch_index[taken]
    return (replace(samples, samples=samples.samples[taken].copy(), noise_mask=mask, batch_index=indices),)


@node(
    "RepeatLatentBatch", "latent/batch", {"samples": Input(LATENT), "amount": Input("INT", 1, 1, MAX_REPEAT)}, (LATENT,)
)
def repeat_latent_batch(context, samples: Latent, amount: int):
    mask = samples.noise_mask
    if mask is not None and mask.shape[0] > 1:  # ComfyUI repeats the mask batch as it is
        mask = np.tile(mask, (amount, 1, 1, 1))
    indices = samples.batch_index
    if indices is not None:  # each repeat's indices after the last's: ComfyUI's offset
        offset = max(indices) - min(indices) + 1
        indices = indices + tuple(index + repeat * offset for repeat in range(1, amount) for index in indices)
    repeated = np.tile(samples.samples, (amount, 1, 1, 1))
    return (replace(samples, samples=repeated, noise_mask=mask, batch_index=indices),)
