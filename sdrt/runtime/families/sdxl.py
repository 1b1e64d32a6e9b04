"""The SDXL families (base and refiner) and their conditioning, as diffusers'
`StableDiffusionXLPipeline` (and its image-to-image and inpainting pipelines) compute it.

- Text (sdrt.runtime.text.encoders, sdrt.runtime.loop.conditioning): both encoders' penultimate
  hidden states concatenated, the pooled embedding from the last encoder. With guidance and no
  negative prompt, a model whose config sets `force_zeros_for_empty_prompt` gets zeros as its
  negative conditioning (hidden and pooled). A negative prompt of "" is encoded like any other.
- `time_ids`: (original size, crop top-left, target size), or for a model that
  `requires_aesthetics_score` (the refiner) (original size, crop top-left, aesthetic score);
  sizes are (height, width) and default to the image's size. The negative row uses the
  negative_* values, each defaulting to its positive counterpart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from sdrt.errors import GenerationError, ModelFolderError
from sdrt.runtime.families.base import Family, RowFeeds
from sdrt.runtime.families.sd import SD_FEATURES
from sdrt.runtime.manifest import PENULTIMATE_HIDDEN, TEXT_EMBEDS, TIME_IDS, UNET_CONTEXT, Manifest

if TYPE_CHECKING:  # the request module imports this one
    from sdrt.runtime.manifest import SdxlSpec
    from sdrt.runtime.request import GenerationRequest
    from sdrt.runtime.request_resolve import ResolvedRequest
    from sdrt.runtime.text.encoders import TextEncoding

#: diffusers' default aesthetic scores for the refiner's conditioning.
AESTHETIC_SCORE, NEGATIVE_AESTHETIC_SCORE = 6.0, 2.5
#: Larger sizes than any model was trained on; bounds what a request can ask for.
MAX_CONDITIONING_SIZE = 16384
Pair = tuple[int, int]


@dataclass(frozen=True)
class SizeConditioning:
    """SDXL's micro-conditioning of one request (diffusers' parameters, (height, width) and
    (top, left) pairs). None sizes are the image's size; negative values default to positive."""

    original_size: Pair | None = None
    crop_top_left: Pair = (0, 0)
    target_size: Pair | None = None
    negative_original_size: Pair | None = None
    negative_crop_top_left: Pair | None = None
    negative_target_size: Pair | None = None
    aesthetic_score: float = AESTHETIC_SCORE
    negative_aesthetic_score: float = NEGATIVE_AESTHETIC_SCORE

    def check(self) -> None:
        for name in (
            "original_size",
            "target_size",
            "negative_original_size",
            "negative_target_size",
            "crop_top_left",
            "negative_crop_top_left",
        ):
            _check_pair(name, getattr(self, name), low=0 if "crop" in name else 1)
        for name in ("aesthetic_score", "negative_aesthetic_score"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise GenerationError(f"{name} must be a finite number, got {value!r}", name)

    def time_ids(self, height: int, width: int, aesthetic: bool) -> tuple[list[float], list[float]]:
        """(negative, positive) rows of time ids for an image of this size."""
        original = self.original_size or (height, width)
        target = self.target_size or (height, width)
        negative_original = self.negative_original_size or original
        negative_target = self.negative_target_size or target
        negative_crop = self.negative_crop_top_left or self.crop_top_left
        if aesthetic:
            positive = [*original, *self.crop_top_left, self.aesthetic_score]
            negative = [*negative_original, *negative_crop, self.negative_aesthetic_score]
        else:
            positive = [*original, *self.crop_top_left, *target]
            negative = [*negative_original, *negative_crop, *negative_target]
        return [float(v) for v in negative], [float(v) for v in positive]


def _check_pair(name: str, value, low: int) -> None:
    if value is None:
        return
    ok = (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and low <= v <= MAX_CONDITIONING_SIZE for v in value)
    )
    if not ok:
        raise GenerationError(
            f"{name} must be two integers from {low} to {MAX_CONDITIONING_SIZE} (height, width), got {value!r}", name
        )


def time_id_rows(spec: SdxlSpec, resolved: ResolvedRequest) -> dict[str, dict[str, np.ndarray]]:
    """The `time_ids` feed of negative and positive rows."""
    negative, positive = (resolved.request.size_conditioning or SizeConditioning()).time_ids(
        resolved.height, resolved.width, spec.requires_aesthetics_score
    )
    return {
        "negative": {TIME_IDS: np.array(negative, np.float32)},
        "positive": {TIME_IDS: np.array(positive, np.float32)},
    }


def _sdxl(manifest: Manifest) -> SdxlSpec:
    """The manifest's SDXL section (Manifest.check refuses an SDXL family without one)."""
    if manifest.sdxl is None:
        raise ModelFolderError(f"family {manifest.family!r} needs the manifest's sdxl section; re-export the model")
    return manifest.sdxl


class StableDiffusionXL(Family):
    """SDXL base: two CLIP encoders (penultimate hidden states concatenated, the second's projected
    pooled output as `text_embeds`) and the size conditioning (`time_ids`)."""

    name = "sdxl"
    display_name = "SDXL"
    hidden_output = PENULTIMATE_HIDDEN
    own_settings = ("size_conditioning", "refiner_switch")
    features = SD_FEATURES | {"refiner", "size_conditioning"}
    refines = frozenset({"sdxl"})  # a base model refines another's latents as diffusers allows
    controlnet_family = "sdxl"

    def text_encoders(self, manifest: Manifest) -> list[tuple[str, str]]:
        sdxl = _sdxl(manifest)
        return list(zip(sdxl.text_encoders, sdxl.tokenizers))

    def text_feeds(self, encoding: TextEncoding) -> dict[str, np.ndarray]:
        if encoding.pooled is None:
            raise ModelFolderError("SDXL's last text encoder gives no pooled output; re-export the model")
        return {UNET_CONTEXT: encoding.hidden, TEXT_EMBEDS: encoding.pooled}

    def zero_negative(self, manifest: Manifest, request: GenerationRequest) -> bool:
        return _sdxl(manifest).force_zeros_for_empty_prompt and request.negative_prompt is None

    def row_feeds(self, manifest: Manifest, resolved: ResolvedRequest) -> RowFeeds:
        return time_id_rows(_sdxl(manifest), resolved)

    def check_request(self, request: GenerationRequest, manifest: Manifest) -> None:
        super().check_request(request, manifest)
        if request.size_conditioning is not None:
            if not isinstance(request.size_conditioning, SizeConditioning):
                raise GenerationError("size_conditioning must be a SizeConditioning", "size_conditioning")
            request.size_conditioning.check()
        switch = request.refiner_switch
        if switch is not None and (
            not isinstance(switch, (int, float)) or isinstance(switch, bool) or not 0 < switch < 1
        ):
            raise GenerationError(
                f"refiner switch must be a number between 0 and 1 (exclusive), got {switch!r}", "refiner_switch"
            )

    def check_manifest(self, manifest: Manifest) -> str | None:
        if manifest.sdxl is None:
            return f"family {manifest.family!r} and the sdxl section disagree"
        if len(manifest.sdxl.text_encoders) != len(manifest.sdxl.tokenizers):
            return (
                f"sdxl lists {len(manifest.sdxl.text_encoders)} text encoders and "
                f"{len(manifest.sdxl.tokenizers)} tokenizers"
            )
        return None


class StableDiffusionXLRefiner(StableDiffusionXL):
    """SDXL's refiner: the second encoder only, and the aesthetic score in its time ids; it
    refines an image (or an SDXL base's latents, sdrt.runtime.features.refiner)."""

    name = "sdxl-refiner"
    display_name = "SDXL refiner"
    features = StableDiffusionXL.features - {"refiner"}

    def check_request(self, request: GenerationRequest, manifest: Manifest) -> None:
        if request.init_image is None and request.init_latents is None:  # an image, or latents (ComfyUI)
            raise GenerationError(
                "this is an SDXL refiner, which refines an image: load it as the refiner of an "
                "SDXL base model (--refiner), or give it an init image",
                "init_image",
            )
        super().check_request(request, manifest)
