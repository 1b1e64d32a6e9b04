"""The guidance a served model's family reads from the servers' fields.

On a guidance-distilled family (FLUX.1: `Family.default_guidance` set) the guidance scale is the
distilled guidance: A1111's routes take it from Forge's `distilled_cfg_scale` (the family's
default when absent), and `cfg_scale` is real CFG only with a negative prompt and a scale above 1
(FluxPipeline's do_true_cfg; A1111 clients send cfg_scale 7 on every request, which must not
double the work of a plain request). The OpenAI route's `guidance_scale`, when the client leaves
it out, is the family's default. Other families keep the fields as they are (Chroma and Z-Image,
whose guidance scale is real CFG, take cfg_scale as it is).
"""

from __future__ import annotations

from pathlib import Path

from sdrt.runtime.manifest import Manifest

#: A cfg_scale at or below this runs no real CFG (A1111 and Forge skip the negative batch at 1).
NO_CFG = 1.0


def served_family(pipeline, model: Path | None):
    """The family of the model a request runs on: the served default's, or that folder's."""
    manifest = pipeline.manifest if model is None else Manifest.load(model)
    return manifest.model_family


def a1111_guidance(family, cfg_scale: float, distilled: float | None, negative: str | None):
    """(guidance_scale, true_cfg_scale) for A1111's cfg_scale and Forge's distilled_cfg_scale."""
    if family.default_guidance is None or "true_cfg_scale" not in family.own_settings:
        return cfg_scale, None  # real CFG is the guidance scale itself (Chroma, Z-Image)
    guidance = family.default_guidance if distilled is None else distilled
    true_cfg = cfg_scale if negative and cfg_scale > NO_CFG else None
    return guidance, true_cfg


def openai_guidance(family, guidance_scale: float, given: bool) -> float:
    """The OpenAI route's guidance: the family's default when the client sent none."""
    if given or family.default_guidance is None:
        return guidance_scale
    return family.default_guidance
