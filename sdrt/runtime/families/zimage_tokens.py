"""Z-Image's token layout, as ZImageTransformer2DModel.patchify_and_embed builds it, computed
here so the exported graph has only dense inputs:

- image tokens are 2x2 latent patches, each patch's features in (row, column, channel) order
  (FLUX packs channel first); the caption's tokens are the Qwen hidden states at the real
  positions (the pipeline drops padding);
- each sequence is padded to a multiple of 32 slots; the model replaces the features of pad
  slots with its learned pad token (`image_pad` / `text_pad`: 1.0 at pad slots) and attends to
  them like real tokens;
- RoPE positions (3 axes): caption slot k is (1 + k, 0, 0); image token (row, column) is
  (caption slots + 1, row, column); an image pad slot is (0, 0, 0);
- the single-stream blocks see [image slots; caption slots] and the prediction is read from
  the image slots (the graph returns it negated, as the pipeline negates it).

The graph takes a call's rows with one caption length (the loop groups rows by the text
sequence's length), so no attention mask is needed: diffusers masks only the batch padding
between captions of different lengths, which a call of one length has none of.
"""

from __future__ import annotations

import numpy as np

from sdrt.runtime.loop.context import StepContext
from sdrt.runtime.loop.denoiser import EngineDenoiser
from sdrt.runtime.manifest import DENOISER_OUTPUT, HIDDEN_STATES, IMG_IDS, TXT_IDS, UNET_CONTEXT

PATCH = 2
#: ZImageTransformer2DModel's SEQ_MULTI_OF: every sequence is padded to this many slots.
SEQ_MULTIPLE = 32
#: The graph's inputs marking pad slots (float32, 1.0 where the pad token goes).
IMAGE_PAD, TEXT_PAD = "image_pad", "text_pad"
#: Dynamic axes: padded image and caption lengths (multiples of SEQ_MULTIPLE).
IMAGE_SLOTS, TEXT_SLOTS = "image_slots", "text_slots"
POSITION_AXES = 3
#: The caption's first position on axis 0 (ZImageTransformer2DModel starts it at 1).
CAPTION_START = 1


def slots(length: int) -> int:
    """`length` tokens padded to a multiple of SEQ_MULTIPLE."""
    return length + (-length) % SEQ_MULTIPLE


def pack(latents: np.ndarray) -> np.ndarray:
    """[b, c, h, w] -> [b, (h/2)(w/2), 2*2*c], features (row, column, channel)."""
    b, c, h, w = latents.shape
    patches = latents.reshape(b, c, h // PATCH, PATCH, w // PATCH, PATCH).transpose(0, 2, 4, 3, 5, 1)
    return patches.reshape(b, (h // PATCH) * (w // PATCH), PATCH * PATCH * c)


def unpack(tokens: np.ndarray, height: int, width: int) -> np.ndarray:
    """[b, (h/2)(w/2), 2*2*c] -> [b, c, h, w] for latents of height x width."""
    b, _, features = tokens.shape
    c = features // (PATCH * PATCH)
    patches = tokens.reshape(b, height // PATCH, width // PATCH, PATCH, PATCH, c).transpose(0, 5, 1, 3, 2, 4)
    return patches.reshape(b, c, height, width)


def pad_rows(tokens: np.ndarray, total: int) -> np.ndarray:
    """[b, n, f] with zero rows appended up to `total` (their features are replaced in the graph)."""
    b, n, f = tokens.shape
    padded = np.zeros((b, total, f), tokens.dtype)
    padded[:, :n] = tokens
    return padded


def pad_marks(length: int, total: int) -> np.ndarray:
    marks = np.zeros(total, np.float32)
    marks[length:] = 1.0
    return marks


def caption_ids(text_slots: int) -> np.ndarray:
    ids = np.zeros((text_slots, POSITION_AXES), np.int64)
    ids[:, 0] = CAPTION_START + np.arange(text_slots)
    return ids


def image_ids(rows: int, columns: int, text_slots: int, image_slots: int) -> np.ndarray:
    ids = np.zeros((image_slots, POSITION_AXES), np.int64)
    count = rows * columns
    ids[:count, 0] = text_slots + CAPTION_START
    ids[:count, 1] = np.repeat(np.arange(rows), columns)
    ids[:count, 2] = np.tile(np.arange(columns), rows)
    return ids


def transformer_feeds(sample: np.ndarray, caption: np.ndarray) -> dict[str, np.ndarray]:
    """The graph's token inputs for latents [b, c, h, w] and caption states [b, length, width]."""
    height, width = sample.shape[2], sample.shape[3]
    tokens = pack(sample)
    count, length = tokens.shape[1], caption.shape[1]
    image_total, text_total = slots(count), slots(length)
    return {
        HIDDEN_STATES: pad_rows(tokens, image_total),
        IMAGE_PAD: pad_marks(count, image_total),
        UNET_CONTEXT: pad_rows(caption, text_total),
        TEXT_PAD: pad_marks(length, text_total),
        IMG_IDS: image_ids(height // PATCH, width // PATCH, text_total, image_total),
        TXT_IDS: caption_ids(text_total),
    }


class ZImageDenoiser(EngineDenoiser):
    """The Z-Image transformer as a denoiser of unpacked latents: each call packs and pads the
    sample and caption, adds the pad marks and positions, and unpacks the image slots. A bound
    guidance (sdrt.runtime.families.zimage_guidance) is told each step's timestep."""

    guidance = None

    def run(self, ctx: StepContext, position: int, inputs: dict[str, np.ndarray]) -> np.ndarray:
        if self.guidance is not None:
            self.guidance.timestep = ctx.timestep
        sample = inputs[self.names.sample]
        feeds = dict(inputs)
        for name, value in transformer_feeds(sample, inputs[UNET_CONTEXT]).items():
            feeds[name] = np.ascontiguousarray(value.astype(self.dtypes[name]))
        prediction = self.engine.run(feeds)[DENOISER_OUTPUT]
        count = (sample.shape[2] // PATCH) * (sample.shape[3] // PATCH)
        return unpack(prediction[:, :count], sample.shape[2], sample.shape[3])
