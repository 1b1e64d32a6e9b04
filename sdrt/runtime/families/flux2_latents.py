"""FLUX.2's latents as the transformer sees them. The loop's latents are the pipeline's
patchified ones, [batch, 4 * vae channels, height / 16, width / 16] (Flux2KleinPipeline draws
its noise in that shape; the VAE graphs patchify and normalise, sdrt.export.flux2), and the
transformer takes them as tokens, [batch, h * w, channels] (_pack_latents), with 4-axis RoPE ids
(time, row, column, text position): (0, row, column, 0) per image token, (0, 0, 0, i) per text
token, and (10 * (k + 1), row, column, 0) for reference image k, whose tokens follow the
image's (_prepare_latent_ids, _prepare_text_ids, _prepare_image_ids). The prediction of the
image's tokens is kept, the references' dropped (`noise_pred[:, :latents.size(1)]`).
"""

from __future__ import annotations

import numpy as np

from sdrt.runtime.flux2_spec import POSITION_AXES
from sdrt.runtime.loop.context import StepContext
from sdrt.runtime.loop.denoiser import EngineDenoiser
from sdrt.runtime.manifest import HIDDEN_STATES, IMG_IDS, TXT_IDS, UNET_CONTEXT

TIME_AXIS, ROW_AXIS, COLUMN_AXIS, TEXT_AXIS = range(POSITION_AXES)
#: Reference image k's time coordinate is REFERENCE_TIME * (k + 1) (_prepare_image_ids' scale).
REFERENCE_TIME = 10
#: The denoiser's feeds of reference images (sdrt.runtime.features.references): their tokens
#: [rows, references' tokens, channels] and ids [references' tokens, 4].
REFERENCE_TOKENS, REFERENCE_IDS = "reference_tokens", "reference_ids"

# The empirical shift of FLUX.2's schedule (compute_empirical_mu): mu is linear in the image's
# tokens, at 10 steps (A1, B1) and at 200 steps (A2, B2), and linear in the steps between;
# past LARGE_IMAGE_TOKENS only the 200-step line is used.
MU_A1, MU_B1 = 8.73809524e-05, 1.89833333
MU_A2, MU_B2 = 0.00016927, 0.45666666
MU_FEW_STEPS, MU_MANY_STEPS = 10.0, 200.0
LARGE_IMAGE_TOKENS = 4300


def empirical_mu(image_tokens: int, steps: int) -> float:
    """compute_empirical_mu of Flux2KleinPipeline."""
    many = MU_A2 * image_tokens + MU_B2
    if image_tokens > LARGE_IMAGE_TOKENS:
        return float(many)
    few = MU_A1 * image_tokens + MU_B1
    slope = (many - few) / (MU_MANY_STEPS - MU_FEW_STEPS)
    intercept = many - MU_MANY_STEPS * slope
    return float(slope * steps + intercept)


def tokens_of(latents: np.ndarray) -> np.ndarray:
    """[b, c, h, w] -> [b, h * w, c]."""
    b, c, h, w = latents.shape
    return latents.reshape(b, c, h * w).transpose(0, 2, 1)


def latents_of(tokens: np.ndarray, height: int, width: int) -> np.ndarray:
    """[b, h * w, c] -> [b, c, h, w]."""
    b, _, c = tokens.shape
    return tokens.transpose(0, 2, 1).reshape(b, c, height, width)


def image_ids(height: int, width: int, time: int = 0) -> np.ndarray:
    """float32 [h * w, 4]: (time, row, column, 0) per token of latents of height x width."""
    ids = np.zeros((height, width, POSITION_AXES), np.float32)
    ids[..., TIME_AXIS] = time
    ids[..., ROW_AXIS] = np.arange(height, dtype=np.float32)[:, None]
    ids[..., COLUMN_AXIS] = np.arange(width, dtype=np.float32)[None, :]
    return ids.reshape(height * width, POSITION_AXES)


def text_ids(length: int) -> np.ndarray:
    ids = np.zeros((length, POSITION_AXES), np.float32)
    ids[:, TEXT_AXIS] = np.arange(length, dtype=np.float32)
    return ids


class TokenDenoiser(EngineDenoiser):
    """The FLUX.2 transformer as a denoiser of the loop's latents: each call makes tokens of the
    sample, appends the reference images' tokens when the rows carry them, adds the position
    ids and returns the image tokens' prediction as latents."""

    def run(self, ctx: StepContext, position: int, inputs: dict[str, np.ndarray]) -> np.ndarray:
        sample = inputs[self.names.sample]
        height, width = sample.shape[2], sample.shape[3]
        feeds = dict(inputs)
        tokens, ids = tokens_of(sample), image_ids(height, width)
        references = feeds.pop(REFERENCE_TOKENS, None)
        reference_ids = feeds.pop(REFERENCE_IDS, None)
        if references is not None and reference_ids is not None:
            tokens = np.concatenate([tokens, references.astype(tokens.dtype)], axis=1)
            ids = np.concatenate([ids, reference_ids])
        feeds[HIDDEN_STATES] = np.ascontiguousarray(tokens).astype(self.dtypes[HIDDEN_STATES], copy=False)
        feeds[IMG_IDS] = ids.astype(self.dtypes[IMG_IDS])
        feeds[TXT_IDS] = text_ids(inputs[UNET_CONTEXT].shape[1]).astype(self.dtypes[TXT_IDS])
        prediction = self.call_engine(ctx, position, feeds)
        return latents_of(prediction[:, : height * width], height, width)
