"""The nodes' implementations on sdrt pipelines. A sampler node runs the pipeline to latents
(`latents_only`), VAEDecode decodes them; text is encoded inside the sampler's run (sdrt's loop
encodes), with CLIPSetLastLayer's clip skip and the LoRAs of the MODEL and CLIP chains.

Latents here are in the diffusion model's space (sdrt's: scaled by the VAE's factor), not
ComfyUI's raw VAE space: they only pass between these nodes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from PIL import Image

from sdrt.errors import SdrtError
from sdrt.runtime.request_checks import MAX_NUM_IMAGES
from sdrt.serve.comfy import dit_models
from sdrt.serve.comfy.nodes import MAX_RESOLUTION, SIZE_STEP, Input, node
from sdrt.serve.comfy.values import Conditioning, Latent, ModelHandle

#: torch.manual_seed keeps a seed's low 64 bits and its CPU generator their low 32.
SEED_BITS_KEPT = 2**32
MODEL, CLIP, VAE, COND, LATENT, IMAGE, MASK = "MODEL", "CLIP", "VAE", "CONDITIONING", "LATENT", "IMAGE", "MASK"
#: ComfyUI's defaults for its core nodes.
DEFAULT_STEPS, DEFAULT_CFG, DEFAULT_SIZE = 20, 8.0, 512
MAX_CFG = 100.0
MAX_LORA_STRENGTH = 100.0
PIXEL_MAX = 255.0


class NodeError(SdrtError):
    """A node's failure: ComfyUI's execution_error names the node and its class."""


def _checkpoints(context) -> list[str]:
    return context.checkpoint_names()


def _loras(context) -> list[str]:
    return context.lora_names()


def _samplers(context) -> list[str]:
    return list(context.samplers)


def _schedulers(context) -> list[str]:
    return list(context.schedulers)


def _inputs(context) -> list[str]:
    return context.input_names()


CHECKPOINT = Input(
    _checkpoints, accepts=lambda context, name: isinstance(name, str) and context.accepts_checkpoint(name)
)


@node("CheckpointLoaderSimple", "loaders", {"ckpt_name": CHECKPOINT}, (MODEL, CLIP, VAE))
def checkpoint_loader(context, ckpt_name: str):
    handle = ModelHandle(context.pipeline_for(ckpt_name), ckpt_name)
    return handle, handle, handle


VAE_NAME = Input(
    lambda context: [*context.checkpoint_names(), *dit_models.vae_files(context)],
    accepts=lambda context, name: name in dit_models.VAE_FILES or CHECKPOINT.accepts(context, name),
)


@node("VAELoader", "loaders", {"vae_name": VAE_NAME}, (VAE,))
def vae_loader(context, vae_name: str):
    """An export's VAE by the export's name (sdrt exports carry their VAE), or FLUX.1's ae file:
    an export of that family's VAE (sdrt.serve.comfy.dit_models)."""
    family = dit_models.VAE_FILES.get(vae_name)
    if family is not None:
        return (ModelHandle(dit_models.family_pipeline(context, family, f"vae_name {vae_name}"), vae_name),)
    return (ModelHandle(context.pipeline_for(vae_name), vae_name),)


@node(
    "CLIPSetLastLayer",
    "conditioning",
    {"clip": Input(CLIP), "stop_at_clip_layer": Input("INT", -1, -24, -1, 1)},
    (CLIP,),
)
def clip_set_last_layer(context, clip: ModelHandle, stop_at_clip_layer: int):
    return (replace(clip, clip_skip=-stop_at_clip_layer),)


@node("CLIPTextEncode", "conditioning", {"text": Input("STRING", multiline=True), "clip": Input(CLIP)}, (COND,))
def clip_text_encode(context, text: str, clip: ModelHandle):
    return (Conditioning(text, clip),)


@node(
    "LoraLoader",
    "loaders",
    {
        "model": Input(MODEL),
        "clip": Input(CLIP),
        "lora_name": Input(_loras),
        "strength_model": Input("FLOAT", 1.0, -MAX_LORA_STRENGTH, MAX_LORA_STRENGTH, 0.01),
        "strength_clip": Input("FLOAT", 1.0, -MAX_LORA_STRENGTH, MAX_LORA_STRENGTH, 0.01),
    },
    (MODEL, CLIP),
)
def lora_loader(context, model, clip, lora_name: str, strength_model: float, strength_clip: float):
    name = context.lora_ref_name(lora_name)
    return model.with_lora(name, strength_model, 0.0), clip.with_lora(name, 0.0, strength_clip)


@node(
    "LoraLoaderModelOnly",
    "loaders",
    {
        "model": Input(MODEL),
        "lora_name": Input(_loras),
        "strength_model": Input("FLOAT", 1.0, -MAX_LORA_STRENGTH, MAX_LORA_STRENGTH, 0.01),
    },
    (MODEL,),
)
def lora_loader_model_only(context, model, lora_name: str, strength_model: float):
    return (model.with_lora(context.lora_ref_name(lora_name), strength_model, 0.0),)


SIZE = Input("INT", DEFAULT_SIZE, 16, MAX_RESOLUTION, SIZE_STEP)


@node(
    "EmptyLatentImage",
    "latent",
    {"width": SIZE, "height": SIZE, "batch_size": Input("INT", 1, 1, MAX_NUM_IMAGES)},
    (LATENT,),
)
def empty_latent_image(context, width: int, height: int, batch_size: int):
    manifest = context.default_manifest()
    factor = manifest.vae_scale_factor
    shape = (batch_size, manifest.latent_channels, height // factor, width // factor)
    return (Latent(np.zeros(shape, np.float32), empty=True),)


@node("VAEDecode", "latent", {"samples": Input(LATENT), "vae": Input(VAE)}, (IMAGE,))
def vae_decode(context, samples: Latent, vae: ModelHandle):
    return (vae.pipeline.decode_latents(samples.samples),)


class _Mode:
    """A generator that draws zeros: the VAE's latent distribution is taken at its mean."""

    @staticmethod
    def randn(shape) -> np.ndarray:
        return np.zeros(shape, np.float32)


@node("VAEEncode", "latent", {"pixels": Input(IMAGE), "vae": Input(VAE)}, (LATENT,))
def vae_encode(context, pixels: np.ndarray, vae: ModelHandle):
    image = (pixels.transpose(0, 3, 1, 2) * 2.0 - 1.0).astype(np.float32)
    return (Latent(vae.pipeline.encode_image(image, _Mode())),)


@node("LoadImage", "image", {"image": Input(_inputs)}, (IMAGE, MASK))
def load_image(context, image: str):
    with Image.open(context.input_path(image)) as opened:
        rgba = opened.convert("RGBA")
    array = np.asarray(rgba, np.float32) / PIXEL_MAX
    # ComfyUI's mask is 1 where the image is transparent.
    return array[None, ..., :3], 1.0 - array[None, ..., 3]


def _save(context, images: np.ndarray, prefix: str, kind: str) -> dict:
    saved = [context.save_image(image, prefix, kind) for image in images]
    return {"images": saved}


@node(
    "SaveImage",
    "image",
    {"images": Input(IMAGE), "filename_prefix": Input("STRING", "ComfyUI")},
    (),
    output_node=True,
)
def save_image(context, images: np.ndarray, filename_prefix: str):
    return (), _save(context, images, filename_prefix, "output")


@node("PreviewImage", "image", {"images": Input(IMAGE)}, (), output_node=True)
def preview_image(context, images: np.ndarray):
    return (), _save(context, images, "ComfyUI_temp", "temp")
