"""ComfyUI's ControlNet nodes (nodes.py: ControlNetLoader, ControlNetApply,
ControlNetApplyAdvanced) on sdrt's ControlNet hook (sdrt.runtime.features.controlnet), with
ComfyUI's rules (comfy/controlnet.py):

- the hint is resized to the latents' pixels by common_upscale, nearest-exact with a centre crop;
- the residuals are multiplied by the strength, on the positive and the negative rows alike;
- start/end percents become noise levels (ModelSamplingDiscrete.percent_to_sigma) and a model call
  is guided when its sigma lies between them, whatever the step count;
- chained ControlNets add their residuals; ControlNetApply's reach a negative that has none.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from PIL import Image

from sdrt.runtime.features.controlnet.units import MAX_SCALE, ControlUnit
from sdrt.serve.comfy.image_nodes import common_upscale
from sdrt.serve.comfy.nodes import Input, node
from sdrt.serve.comfy.sd_nodes import COND, IMAGE, PIXEL_MAX, VAE, NodeError
from sdrt.serve.comfy.values import Conditioning, Control

CONTROL_NET = "CONTROL_NET"
#: ControlBase's upscale_algorithm and crop for the hint.
HINT_METHOD, HINT_CROP = "nearest-exact", "center"
#: percent_to_sigma: a start at 0 is "any level" (ComfyUI's 999999999.9), an end at 1 is level 0;
#: between, the level of timestep (1 - percent) * 999 (ModelSamplingDiscrete's constant).
ANY_LEVEL, PERCENT_TIMESTEPS = 999999999.9, 999.0
PERCENT_STEP = 0.001


def _controlnets(context) -> list[str]:
    return context.controlnet_names()


CONTROLNET_NAME = Input(
    _controlnets, accepts=lambda context, name: isinstance(name, str) and context.controlnet_name(name) is not None
)
STRENGTH = Input("FLOAT", 1.0, 0.0, MAX_SCALE, 0.01)


@node("ControlNetLoader", "loaders", {"control_net_name": CONTROLNET_NAME}, (CONTROL_NET,))
def controlnet_loader(context, control_net_name: str):
    return (context.controlnet_name(control_net_name),)


def _with(conditioning: Conditioning, control: Control) -> Conditioning:
    return replace(conditioning, controls=(*conditioning.controls, control))


@node(
    "ControlNetApply",
    "conditioning/controlnet",
    {"conditioning": Input(COND), "control_net": Input(CONTROL_NET), "image": Input(IMAGE), "strength": STRENGTH},
    (COND,),
)
def controlnet_apply(context, conditioning: Conditioning, control_net: str, image: np.ndarray, strength: float):
    if strength == 0:
        return (conditioning,)
    return (_with(conditioning, Control(control_net, image, strength, to_uncond=True)),)


@node(
    "ControlNetApplyAdvanced",
    "conditioning/controlnet",
    {
        "positive": Input(COND),
        "negative": Input(COND),
        "control_net": Input(CONTROL_NET),
        "image": Input(IMAGE),
        "strength": STRENGTH,
        "start_percent": Input("FLOAT", 0.0, 0.0, 1.0, PERCENT_STEP),
        "end_percent": Input("FLOAT", 1.0, 0.0, 1.0, PERCENT_STEP),
    },
    (COND, COND),
    output_names=("positive", "negative"),
    optional={"vae": Input(VAE)},  # for ControlNets that encode their hint (not SD 1.x / SDXL ones)
)
def controlnet_apply_advanced(
    context, positive, negative, control_net, image, strength, start_percent, end_percent, vae=None
):
    if strength == 0:
        return positive, negative
    control = Control(control_net, image, strength, start_percent, end_percent)
    return _with(positive, control), _with(negative, control)


def percent_to_sigma(model_sigmas, percent: float) -> float:
    """ModelSamplingDiscrete.percent_to_sigma on ComfyUI's sigma table."""
    if percent <= 0.0:
        return ANY_LEVEL
    if percent >= 1.0:
        return 0.0
    return float(model_sigmas.t_to_sigma((1.0 - percent) * PERCENT_TIMESTEPS))


def control_units(positive: Conditioning, negative: Conditioning, model_sigmas, height: int, width: int):
    """The sampler's ControlUnits: the positive's ControlNets, which the negative must carry too
    (sdrt's ControlNets guide both halves of guidance alike)."""
    controls = positive.controls
    same = len(negative.controls) == len(controls) and all(a is b for a, b in zip(negative.controls, controls))
    if not same and not (not negative.controls and all(control.to_uncond for control in controls)):
        raise NodeError(
            "the positive and negative conditionings carry different ControlNets: sdrt applies a sampler's "
            "ControlNets to both (give both through the same ControlNetApplyAdvanced)"
        )
    units = []
    for control in controls:
        hint = control.hint
        if hint.shape[0] != 1:
            raise NodeError(f"the {control.name} ControlNet's image is a batch of {hint.shape[0]}: give one image")
        resized = common_upscale(hint.transpose(0, 3, 1, 2), width, height, HINT_METHOD, HINT_CROP)[0]
        pixels = np.round(np.clip(resized.transpose(1, 2, 0), 0, 1) * PIXEL_MAX).astype(np.uint8)
        levels = (
            percent_to_sigma(model_sigmas, control.start_percent),
            percent_to_sigma(model_sigmas, control.end_percent),
        )
        units.append(ControlUnit(control.name, Image.fromarray(pixels), float(control.strength), levels=levels))
    return tuple(units)
