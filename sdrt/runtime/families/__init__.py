"""Model families: what an export of each holds and how the loop drives it (base.Family).

`FAMILIES` is the single source of family names: the manifest's `family` picks one
(`family_named`, `Manifest.model_family`), the ControlNet manifest takes its list from it, a test
holds manifest.schema.json's list to it, and adding a family is adding a module here and a line
below.
"""

from __future__ import annotations

from sdrt.errors import ModelFolderError
from sdrt.runtime.families.base import DenoiserCall, Family, LatentFormat
from sdrt.runtime.families.chroma import Chroma
from sdrt.runtime.families.flux import Flux
from sdrt.runtime.families.flux2 import Flux2
from sdrt.runtime.families.sd import InferredStableDiffusion, StableDiffusion1, StableDiffusion2
from sdrt.runtime.families.sd3 import StableDiffusion3
from sdrt.runtime.families.sdxl import StableDiffusionXL, StableDiffusionXLRefiner
from sdrt.runtime.families.zimage import ZImage

FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        StableDiffusion1(),
        StableDiffusion2(),
        StableDiffusionXL(),
        StableDiffusionXLRefiner(),
        Flux(),
        InferredStableDiffusion(),
        StableDiffusion3(),
        Chroma(),
        Flux2(),
        ZImage(),
    )
}
FAMILY_NAMES = tuple(FAMILIES)

__all__ = ["FAMILIES", "FAMILY_NAMES", "DenoiserCall", "Family", "LatentFormat", "family_named"]


def family_named(name: str) -> Family:
    """The registered family called `name` (ModelFolderError naming the known ones)."""
    if name not in FAMILIES:
        raise ModelFolderError(f"unknown model family {name!r}; sdrt runs {', '.join(FAMILY_NAMES)}")
    return FAMILIES[name]
