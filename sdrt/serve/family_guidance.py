"""The guidance a served model's family reads from the servers' fields.

On a guidance-distilled family (FLUX.1: a default guidance and `true_cfg_scale`) the guidance scale is the
distilled guidance: A1111's routes take it from Forge's `distilled_cfg_scale` (the family's
default when absent), and `cfg_scale` is real CFG only with a negative prompt and a scale above 1
(FluxPipeline's do_true_cfg; A1111 clients send cfg_scale 7 on every request, which must not
double the work of a plain request). The OpenAI route's `guidance_scale`, when the client leaves
it out, is the export's default (FLUX.1's 3.5, Fill's 30, SD3's 7.0, Chroma's 5.0). Other families keep the
fields as they are (SD3, Chroma and Z-Image, whose guidance scale is real CFG, take cfg_scale as it is).
"""

from __future__ import annotations

from pathlib import Path

from sdrt.runtime.manifest import Manifest

#: A cfg_scale at or below this runs no real CFG (A1111 and Forge skip the negative batch at 1).
NO_CFG = 1.0


def served_manifest(pipeline, model: Path | None) -> Manifest:
    """The manifest of the model a request runs on: the served default's, or that folder's."""
    return pipeline.manifest if model is None else Manifest.load(model)


def served_family(pipeline, model: Path | None):
    """The family of the model a request runs on."""
    return served_manifest(pipeline, model).model_family


def edits_reference(pipeline, model: Path | None) -> bool:
    """Whether the served model edits a reference image (FLUX.1 Kontext) rather than starting from it."""
    manifest = pipeline.manifest if model is None else Manifest.load(model)
    return manifest.flux is not None and manifest.flux.kontext


def a1111_references(family, body, image, strength) -> tuple[list | None, object, float | None]:
    """(reference_images, init image, strength) of an A1111 request. FLUX.2 [klein] edits from
    reference images (Flux2KleinPipeline takes `image` as references and has no image-to-image),
    so img2img's init_images, all of them in order, are its references, with no start image and
    no strength; a mask is refused naming the field (it does not inpaint). Others: as given."""
    if image is None or "reference_images" not in family.features:
        return None, image, strength
    from sdrt.serve.a1111 import decode_image
    from sdrt.serve.schemas import RequestError

    if getattr(body, "mask", None):
        raise RequestError(
            400, f"mask: a {family.display_name} model edits from reference images; it takes no mask", "mask"
        )
    return [decode_image(data, "init_images") for data in body.init_images], None, None


def a1111_guidance(manifest: Manifest, cfg_scale: float, distilled: float | None, negative: str | None):
    """(guidance_scale, true_cfg_scale) for A1111's cfg_scale and Forge's distilled_cfg_scale."""
    family = manifest.model_family
    if not guidance_distilled(family):
        return cfg_scale, None
    guidance = family.guidance_default(manifest) if distilled is None else distilled
    true_cfg = cfg_scale if negative and cfg_scale > NO_CFG else None
    return guidance, true_cfg


def guidance_distilled(family) -> bool:
    """Whether the family's guidance scale is a distilled guidance, real CFG its true_cfg_scale
    (FLUX.1); SD3 and Chroma have a default guidance that is real CFG."""
    return family.default_guidance is not None and "true_cfg_scale" in family.own_settings


def openai_guidance(manifest: Manifest, guidance_scale: float, given: bool) -> float:
    """The OpenAI route's guidance: the export's default when the client sent none."""
    default = manifest.model_family.guidance_default(manifest)
    return guidance_scale if given or default is None else default
