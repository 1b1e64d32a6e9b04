"""ComfyUI's FLUX.1 and SD3 nodes: the separate loaders of its FLUX / SD3 workflows (UNETLoader,
DualCLIPLoader, TripleCLIPLoader, CLIPLoader: sdrt.serve.comfy.dit_models maps their files onto
sdrt's exports), EmptySD3LatentImage, FluxGuidance and the model-sampling patches
(ModelSamplingFlux, ModelSamplingSD3: comfy_extras/nodes_flux.py, nodes_model_advanced.py).
KSampler runs these models through sdrt.serve.comfy.dit_sampling."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from sdrt.errors import SdrtError
from sdrt.runtime.request_checks import MAX_NUM_IMAGES
from sdrt.runtime.schedulers.kdiffusion.comfy_flow_sigmas import DISCRETE_FLOW, FLUX_SAMPLING, FlowModelSampling
from sdrt.serve.comfy import dit_models
from sdrt.serve.comfy.nodes import MAX_RESOLUTION, Input, node
from sdrt.serve.comfy.sd_nodes import CHECKPOINT, CLIP, COND, LATENT, MODEL, NodeError
from sdrt.serve.comfy.values import Conditioning, Latent, ModelHandle, TextEncoderFiles

#: UNETLoader's weight dtypes (sdrt runs the export's own precision whichever is named).
WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")
#: The CLIP loaders' device choice (sdrt runs the export's text encoders where they are).
DEVICES = ("default", "cpu")
#: FluxGuidance's default and range, ModelSamplingSD3's and ModelSamplingFlux's (ComfyUI's nodes).
FLUX_GUIDANCE, MAX_GUIDANCE = 3.5, 100.0
SD3_SHIFT, MAX_SHIFT = 3.0, 100.0
FLUX_MAX_SHIFT, FLUX_BASE_SHIFT, FLUX_SIZE = 1.15, 0.5, 1024
#: ModelSamplingFlux's line through (256 tokens, base_shift) and (4096 tokens, max_shift); a
#: token is a 2x2 patch of 8x8-pixel latents.
FLUX_TOKENS_LOW, FLUX_TOKENS_HIGH, FLUX_TOKEN_PIXELS = 256, 4096, 8 * 8 * 2 * 2
#: EmptySD3LatentImage: 16 channels at 1/8 of the size, sizes in steps of 16.
SD3_LATENT_CHANNELS, SD3_DOWNSCALE, SD3_SIZE_STEP = 16, 8, 16


def _encoders(context) -> list[str]:
    return dit_models.encoder_files(context)


ENCODER = Input(_encoders, accepts=lambda context, name: dit_models.encoder_role(name) is not None)
ENCODER_DEVICE = Input(lambda context: list(DEVICES))


@node(
    "UNETLoader",
    "advanced/loaders",
    {"unet_name": CHECKPOINT, "weight_dtype": Input(lambda context: list(WEIGHT_DTYPES))},
    (MODEL,),
)
def unet_loader(context, unet_name: str, weight_dtype: str):
    """An export's diffusion model by the export's name (its text encoders and VAE come with it)."""
    return (ModelHandle(context.pipeline_for(unet_name), unet_name),)


def _clip(node_name: str, clip_type: dit_models.ClipType, type_name: str, names: tuple[str, ...]) -> tuple:
    try:
        dit_models.check_files(node_name, clip_type, names)
    except SdrtError as error:
        raise NodeError(str(error)) from None
    files = TextEncoderFiles(node_name, type_name, clip_type.family, names, clip_type.t5)
    return (ModelHandle(None, " + ".join(names), encoders=files),)


@node(
    "DualCLIPLoader",
    "advanced/loaders",
    {"clip_name1": ENCODER, "clip_name2": ENCODER, "type": Input(lambda context: list(dit_models.DUAL_TYPES))},
    (CLIP,),
    optional={"device": ENCODER_DEVICE},
)
def dual_clip_loader(context, clip_name1: str, clip_name2: str, type: str, device: str = DEVICES[0]):
    return _clip("DualCLIPLoader", dit_models.DUAL_TYPES[type], type, (clip_name1, clip_name2))


@node(
    "TripleCLIPLoader",
    "advanced/loaders",
    {"clip_name1": ENCODER, "clip_name2": ENCODER, "clip_name3": ENCODER},
    (CLIP,),
)
def triple_clip_loader(context, clip_name1: str, clip_name2: str, clip_name3: str):
    """SD3's three encoders (CLIP-L, CLIP-G, T5)."""
    return _clip("TripleCLIPLoader", dit_models.TRIPLE_TYPE, "sd3", (clip_name1, clip_name2, clip_name3))


@node(
    "CLIPLoader",
    "advanced/loaders",
    {"clip_name": ENCODER, "type": Input(lambda context: list(dit_models.SINGLE_TYPES))},
    (CLIP,),
    optional={"device": ENCODER_DEVICE},
)
def clip_loader(context, clip_name: str, type: str, device: str = DEVICES[0]):
    return _clip("CLIPLoader", dit_models.SINGLE_TYPES[type], type, (clip_name,))


@node(
    "FluxGuidance",
    "advanced/conditioning/flux",
    {"conditioning": Input(COND), "guidance": Input("FLOAT", FLUX_GUIDANCE, 0.0, MAX_GUIDANCE, 0.1)},
    (COND,),
)
def flux_guidance(context, conditioning: Conditioning, guidance: float):
    """FLUX.1 dev's distilled guidance, carried by the conditioning."""
    return (replace(conditioning, guidance=float(guidance)),)


@node(
    "EmptySD3LatentImage",
    "latent/sd3",
    {
        "width": Input("INT", FLUX_SIZE, 16, MAX_RESOLUTION, SD3_SIZE_STEP),
        "height": Input("INT", FLUX_SIZE, 16, MAX_RESOLUTION, SD3_SIZE_STEP),
        "batch_size": Input("INT", 1, 1, MAX_NUM_IMAGES),
    },
    (LATENT,),
)
def empty_sd3_latent_image(context, width: int, height: int, batch_size: int):
    """ComfyUI's zeros (its raw VAE space: a flow sampler moves them into the model's)."""
    shape = (batch_size, SD3_LATENT_CHANNELS, height // SD3_DOWNSCALE, width // SD3_DOWNSCALE)
    return (Latent(np.zeros(shape, np.float32), empty=True),)


def _patched(model: ModelHandle, family: str, node_name: str, sampling: FlowModelSampling) -> tuple:
    pipeline: Any = model.pipeline
    actual = pipeline.manifest.family
    if actual != family:
        raise NodeError(f"{node_name} patches a {family} model; {model.name} is a {actual} model")
    return (replace(model, model_sampling=sampling),)


@node(
    "ModelSamplingFlux",
    "advanced/model",
    {
        "model": Input(MODEL),
        "max_shift": Input("FLOAT", FLUX_MAX_SHIFT, 0.0, MAX_SHIFT, 0.01),
        "base_shift": Input("FLOAT", FLUX_BASE_SHIFT, 0.0, MAX_SHIFT, 0.01),
        "width": Input("INT", FLUX_SIZE, 16, MAX_RESOLUTION, 8),
        "height": Input("INT", FLUX_SIZE, 16, MAX_RESOLUTION, 8),
    },
    (MODEL,),
)
def model_sampling_flux(context, model, max_shift: float, base_shift: float, width: int, height: int):
    """The shift for an image of this size on ModelSamplingFlux's line."""
    slope = (max_shift - base_shift) / (FLUX_TOKENS_HIGH - FLUX_TOKENS_LOW)
    shift = (width * height / FLUX_TOKEN_PIXELS) * slope + (base_shift - slope * FLUX_TOKENS_LOW)
    return _patched(model, "flux", "ModelSamplingFlux", FlowModelSampling(FLUX_SAMPLING, shift))


@node(
    "ModelSamplingSD3",
    "advanced/model",
    {"model": Input(MODEL), "shift": Input("FLOAT", SD3_SHIFT, 0.0, MAX_SHIFT, 0.01)},
    (MODEL,),
)
def model_sampling_sd3(context, model, shift: float):
    return _patched(model, "sd3", "ModelSamplingSD3", FlowModelSampling(DISCRETE_FLOW, float(shift)))
