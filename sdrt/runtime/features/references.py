"""FLUX.2 [klein]'s reference images (image editing), as Flux2KleinPipeline takes its `image`:

- each image is checked (Flux2ImageProcessor.check_image_input: both sides at least 64 pixels,
  sides at most 8:1), resized with Lanczos to the native area when larger (1024 x 1024 pixels,
  _resize_to_target_area: each side scaled by sqrt(area ratio) and truncated), cut to the
  model's size multiple (16) by a centred crop (resize_mode="crop") and made [-1, 1] RGB;
- encoded by the VAE encoder to its mean (sample_mode="argmax"; the graph patchifies and
  normalises, sdrt.export.flux2), one image at a time, at its own size;
- fed to every transformer call after the image's tokens, image k with time coordinate
  10 * (k + 1) (sdrt.runtime.families.flux2_latents), the same for every row (the negative
  rows of CFG too); the transformer's prediction of them is dropped.

RGBA and other modes become RGB by sdrt's one rule (sdrt.runtime.imaging.inputs.to_rgb:
alpha flattened onto white); diffusers' convert("RGB") drops the alpha instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from sdrt.errors import GenerationError
from sdrt.runtime.engines import Engine
from sdrt.runtime.families.flux2_latents import REFERENCE_IDS, REFERENCE_TIME, REFERENCE_TOKENS, image_ids, tokens_of
from sdrt.runtime.imaging.inputs import InputImageError, open_image, to_model_input, to_rgb
from sdrt.runtime.loop.context import StepContext
from sdrt.runtime.loop.hooks import ModelCall, StepHook
from sdrt.runtime.loop.timings import REFERENCE_FEEDS

PARAM = "reference_images"
#: Flux2ImageProcessor.check_image_input's limits.
MIN_SIDE, MAX_ASPECT = 64, 8
#: Larger references are resized to this area (Flux2KleinPipeline: 1024 * 1024 pixels).
MAX_AREA = 1024 * 1024
#: How many references a request may give (the export's token range leaves room for this many
#: native-size ones: sdrt.export.flux2.MAX_REFERENCE_IMAGES).
MAX_REFERENCES = 4


def check_reference(image: Image.Image, index: int) -> None:
    width, height = image.size
    where = f"reference image {index + 1} ({width}x{height})"
    if width < MIN_SIDE or height < MIN_SIDE:
        raise GenerationError(f"{where} is too small: both sides must be at least {MIN_SIDE} pixels", PARAM)
    if max(width / height, height / width) > MAX_ASPECT:
        raise GenerationError(f"{where} is too elongated: its sides must be within {MAX_ASPECT}:1", PARAM)


def _area_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) after _resize_to_target_area when the image is larger than MAX_AREA."""
    if width * height <= MAX_AREA:
        return width, height
    scale = math.sqrt(MAX_AREA / (width * height))
    return int(width * scale), int(height * scale)


def prepared_size(image: Image.Image, multiple: int) -> tuple[int, int]:
    """(height, width) of a reference as the pipeline prepares it (and sizes the image by)."""
    width, height = _area_size(*image.size)
    return height - height % multiple, width - width % multiple


def reference_input(image: Image.Image, multiple: int, index: int) -> np.ndarray:
    """float32 [1, 3, height, width] in [-1, 1]: one reference as the pipeline prepares it."""
    check_reference(image, index)
    image = to_rgb(image)
    if _area_size(*image.size) != image.size:
        image = image.resize(_area_size(*image.size), Image.Resampling.LANCZOS)
    width, height = image.size
    kept_height, kept_width = prepared_size(image, multiple)
    left, top = (width - kept_width) // 2, (height - kept_height) // 2
    image = image.crop((left, top, left + kept_width, top + kept_height))
    return to_model_input(image, kept_height, kept_width)


def open_references(sources: Sequence) -> list[Image.Image]:
    """The request's references opened and checked (GenerationError naming reference_images)."""
    if isinstance(sources, (str, bytes)) or not isinstance(sources, Sequence) or not sources:
        raise GenerationError("reference_images must be a non-empty list of images", PARAM)
    if len(sources) > MAX_REFERENCES:
        raise GenerationError(f"{len(sources)} reference images; at most {MAX_REFERENCES} are taken", PARAM)
    images = []
    for source in sources:
        try:
            images.append(open_image(source))
        except InputImageError as error:
            raise GenerationError(str(error), PARAM) from None
        check_reference(images[-1], len(images) - 1)
    return images


class ReferenceImages(StepHook):
    """The references' tokens and position ids, encoded once, added to every denoiser call."""

    feeds_measure = REFERENCE_FEEDS

    def __init__(self, encoder: Engine, images: Sequence[Image.Image], multiple: int):
        tokens, ids = [], []
        for index, image in enumerate(images):
            pixels = reference_input(image, multiple, index)
            mean = encoder.run({"sample": pixels.astype(encoder.input_dtype("sample"))})["latent_mean"]
            latents = mean.astype(np.float32)
            tokens.append(tokens_of(latents)[0])
            ids.append(image_ids(latents.shape[2], latents.shape[3], REFERENCE_TIME * (index + 1)))
        self.tokens = np.concatenate(tokens)
        self.ids = np.concatenate(ids)

    def extra_feeds(self, ctx: StepContext, call: ModelCall) -> dict[str, np.ndarray]:
        rows = call.sample.shape[0]
        return {REFERENCE_TOKENS: np.broadcast_to(self.tokens, (rows, *self.tokens.shape)), REFERENCE_IDS: self.ids}
