"""ComfyUI's conditioning-list nodes (nodes.py: ConditioningCombine, ConditioningSetArea,
ConditioningSetAreaPercentage, ConditioningSetAreaStrength, ConditioningSetMask,
ConditioningSetTimestepRange) and
the sampler's conditioning entries they make (sdrt.runtime.regions, run by
sdrt.runtime.loop.regional on SD 1.x / SDXL UNets).

As ComfyUI's node_helpers.conditioning_set_values, a node sets its values on every entry of
the list; ConditioningCombine joins two lists. ConditioningSetArea's pixels become latent units
by // 8 (ComfyUI's constant, whatever the VAE); a timestep range's percents become noise levels
as a ControlNet's do (percent_to_sigma).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from sdrt.runtime.regions import Area, ConditioningEntries, ConditioningEntry
from sdrt.serve.comfy.control_nodes import PERCENT_STEP, percent_to_sigma
from sdrt.serve.comfy.dit_sampling import FLOW_FAMILIES
from sdrt.serve.comfy.nodes import MAX_RESOLUTION, SIZE_STEP, Input, node
from sdrt.serve.comfy.sd_nodes import COND, MASK, NodeError
from sdrt.serve.comfy.values import Conditioning, Region

#: ConditioningSetArea's pixels per latent unit (nodes.py: height // 8), and its smallest side.
AREA_UNIT, MIN_AREA_SIDE = 8, 64
#: The strength range of ComfyUI's area nodes.
MAX_STRENGTH, STRENGTH_STEP = 10.0, 0.01
FRACTION_STEP = 0.01
STRENGTH = Input("FLOAT", 1.0, 0.0, MAX_STRENGTH, STRENGTH_STEP)


def _fraction(default: float) -> Input:
    return Input("FLOAT", default, 0.0, 1.0, FRACTION_STEP)


def _each(conditioning: Conditioning, **values) -> Conditioning:
    """conditioning_set_values: the values set on every entry of the list."""
    first, *rest = (replace(entry, region=replace(entry.region, **values)) for entry in conditioning.entries)
    return replace(first, combined=tuple(rest))


@node(
    "ConditioningCombine",
    "conditioning",
    {"conditioning_1": Input(COND), "conditioning_2": Input(COND)},
    (COND,),
)
def conditioning_combine(context, conditioning_1: Conditioning, conditioning_2: Conditioning):
    first, *rest = (*conditioning_1.entries, *conditioning_2.entries)
    return (replace(first, combined=tuple(rest)),)


def _side(default: int) -> Input:
    return Input("INT", default, MIN_AREA_SIDE, MAX_RESOLUTION, SIZE_STEP)


@node(
    "ConditioningSetArea",
    "conditioning",
    {
        "conditioning": Input(COND),
        "width": _side(MIN_AREA_SIDE),
        "height": _side(MIN_AREA_SIDE),
        "x": Input("INT", 0, 0, MAX_RESOLUTION, SIZE_STEP),
        "y": Input("INT", 0, 0, MAX_RESOLUTION, SIZE_STEP),
        "strength": STRENGTH,
    },
    (COND,),
)
def conditioning_set_area(context, conditioning, width: int, height: int, x: int, y: int, strength: float):
    area = Area(height // AREA_UNIT, width // AREA_UNIT, y // AREA_UNIT, x // AREA_UNIT)
    return (_each(conditioning, area=area, strength=strength),)


@node(
    "ConditioningSetAreaPercentage",
    "conditioning",
    {
        "conditioning": Input(COND),
        "width": _fraction(1.0),
        "height": _fraction(1.0),
        "x": _fraction(0.0),
        "y": _fraction(0.0),
        "strength": STRENGTH,
    },
    (COND,),
)
def conditioning_set_area_percentage(context, conditioning, width: float, height: float, x: float, y: float, strength):
    area = Area(height, width, y, x, percentage=True)
    return (_each(conditioning, area=area, strength=strength),)


@node("ConditioningSetAreaStrength", "conditioning", {"conditioning": Input(COND), "strength": STRENGTH}, (COND,))
def conditioning_set_area_strength(context, conditioning, strength: float):
    return (_each(conditioning, strength=strength),)


#: ConditioningSetMask's set_cond_area: the whole latents, or the mask's bounding box.
MASK_AREAS = ("default", "mask bounds")


@node(
    "ConditioningSetMask",
    "conditioning",
    {
        "conditioning": Input(COND),
        "mask": Input(MASK),
        "strength": STRENGTH,
        "set_cond_area": Input(lambda context: list(MASK_AREAS)),
    },
    (COND,),
)
def conditioning_set_mask(context, conditioning, mask: np.ndarray, strength: float, set_cond_area: str):
    mask = np.asarray(mask, np.float32)
    mask = mask[None] if mask.ndim < 3 else mask
    values = dict(mask=mask, mask_strength=strength, mask_bounds=set_cond_area != MASK_AREAS[0])
    return (_each(conditioning, **values),)


@node(
    "ConditioningSetTimestepRange",
    "advanced/conditioning",
    {
        "conditioning": Input(COND),
        "start": Input("FLOAT", 0.0, 0.0, 1.0, PERCENT_STEP),
        "end": Input("FLOAT", 1.0, 0.0, 1.0, PERCENT_STEP),
    },
    (COND,),
)
def conditioning_set_timestep_range(context, conditioning, start: float, end: float):
    return (_each(conditioning, start_percent=start, end_percent=end),)


def _plain(conditioning: Conditioning) -> bool:
    return not conditioning.combined and conditioning.region == Region() and conditioning.region.mask is None


def conditioning_entries(positive: Conditioning, negative: Conditioning, model_sigmas, pipeline):
    """The sampler's ConditioningEntries, or None for one plain conditioning a side (sdrt's
    ordinary guidance runs those)."""
    if _plain(positive) and _plain(negative):
        return None
    family = pipeline.manifest.family
    if family in FLOW_FAMILIES or pipeline.family.sampler_space != "diffusion":
        raise NodeError(
            "conditioning lists (ConditioningCombine, ConditioningSetArea, ConditioningSetAreaPercentage, "
            f"ConditioningSetAreaStrength, ConditioningSetTimestepRange) run on SD 1.x and SDXL; this is {family}"
        )
    entries = (*positive.entries, *negative.entries)
    if any(entry.controls for entry in entries):
        raise NodeError("ControlNets do not run with conditioning lists or areas yet (ComfyUI crops the hint to each)")
    if len({entry.clip.clip_skip for entry in entries}) > 1:
        raise NodeError("the conditionings of one sampler come from CLIPs with different CLIPSetLastLayer values")

    def entry(conditioning: Conditioning) -> ConditioningEntry:
        region = conditioning.region
        levels = None
        if region.start_percent is not None or region.end_percent is not None:
            start = 0.0 if region.start_percent is None else region.start_percent
            end = 1.0 if region.end_percent is None else region.end_percent
            levels = (percent_to_sigma(model_sigmas, start), percent_to_sigma(model_sigmas, end))
        return ConditioningEntry(
            conditioning.text,
            region.area,
            float(region.strength),
            levels,
            mask=region.mask,
            mask_strength=float(region.mask_strength),
            mask_bounds=region.mask_bounds,
        )

    return ConditioningEntries(tuple(entry(c) for c in positive.entries), tuple(entry(c) for c in negative.entries))
