"""Stable Diffusion 1.x and 2.x: one CLIP text encoder whose last hidden states condition a UNet
(`encoder_hidden_states`); 4-channel latents. SD 1.x and 2.x differ in the text encoder (SD 2.x's
OpenCLIP, to which A1111 does not apply clip skip) and, for some models, in v-prediction, which
the export's scheduler config carries."""

from __future__ import annotations

from typing import ClassVar

from sdrt.runtime.families.base import Family
from sdrt.runtime.manifest import Manifest

#: Features both families support (names in sdrt.runtime.features.combinations).
SD_FEATURES = frozenset(
    {
        "img2img",
        "inpainting",
        "init_latents",
        "controlnet",
        "lora",
        "embeddings",
        "deepcache",
        "hires",
        "masked_area",
        "tiny_vae",
        "preview",
        "conditioning_lists",
    }
)


class StableDiffusion1(Family):
    name = "sd1"
    display_name = "SD 1.x"
    clip_skip_applies = True
    features = SD_FEATURES
    controlnet_family: ClassVar[str | None] = "sd1"

    def check_manifest(self, manifest: Manifest) -> str | None:
        return None if manifest.sdxl is None else f"family {manifest.family!r} and the sdxl section disagree"


class StableDiffusion2(StableDiffusion1):
    name = "sd2"
    display_name = "SD 2.x"
    clip_skip_applies = False
    controlnet_family = "sd2"


class InferredStableDiffusion(StableDiffusion1):
    """A diffusers ONNX folder without a manifest (sdrt.runtime.model_folder): the SD 1.x/2.x
    layout, its version unknown, so clip skip is not applied (its encoder gives no layers)."""

    name = "unknown"
    display_name = "SD 1.x/2.x (ONNX folder)"
    clip_skip_applies = False
    exported = False
    controlnet_family = None
