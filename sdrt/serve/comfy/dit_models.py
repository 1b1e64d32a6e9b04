"""ComfyUI's separate model files for FLUX.1 and SD3 (UNETLoader's diffusion model, the CLIP
loaders' text encoders, FLUX's VAE) mapped onto sdrt's exports, which carry all of them: a
diffusion model by the export's name ("flux1-dev.safetensors" finds the export "flux1-dev"), a
text encoder or VAE by the role its ComfyUI file name says (the names of ComfyUI's docs:
clip_l, clip_g, t5xxl_*, ae), used from the export the sampler's model is of."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from sdrt.errors import SdrtError
from sdrt.runtime.manifest import Manifest

T5, CLIP_L, CLIP_G = "t5", "clip_l", "clip_g"
#: A text-encoder file's role, by how its name starts (t5xxl_fp16, t5xxl_fp8_e4m3fn, ...).
ROLE_PREFIXES = {"t5xxl": T5, "clip_l": CLIP_L, "clip_g": CLIP_G}
#: The file name ComfyUI's docs give each role (what /object_info lists).
ROLE_FILES = {T5: "t5xxl_fp16.safetensors", CLIP_L: "clip_l.safetensors", CLIP_G: "clip_g.safetensors"}
#: FLUX.1's VAE as Black Forest Labs ship it (every FLUX.1 model's: the export's own VAE).
VAE_FILES = {"ae.safetensors": "flux"}


@dataclass(frozen=True)
class ClipType:
    """A CLIP loader's type: the sdrt family whose text encoders these are, the files' roles,
    and whether SD3 runs T5 (None: not an SD3 choice)."""

    family: str
    roles: frozenset[str]
    t5: bool | None = None


#: DualCLIPLoader's types sdrt runs, TripleCLIPLoader's (SD3 with T5), CLIPLoader's.
DUAL_TYPES = {
    "flux": ClipType("flux", frozenset({T5, CLIP_L})),
    "sd3": ClipType("sd3", frozenset({CLIP_L, CLIP_G}), t5=False),
    "sdxl": ClipType("sdxl", frozenset({CLIP_L, CLIP_G})),
}
TRIPLE_TYPE = ClipType("sd3", frozenset({CLIP_L, CLIP_G, T5}), t5=True)
SINGLE_TYPES = {"stable_diffusion": ClipType("sd1", frozenset({CLIP_L}))}
#: The families a text-encoder role's file is part of (the choices /object_info lists).
ROLE_FAMILIES = {T5: ("flux", "sd3"), CLIP_L: ("flux", "sd3", "sdxl", "sd1"), CLIP_G: ("sd3", "sdxl")}


def encoder_role(name) -> str | None:
    """The role a ComfyUI text-encoder file name says (None: not one sdrt knows)."""
    if not isinstance(name, str):
        return None
    stem = PurePosixPath(name.replace("\\", "/")).name.lower()
    return next((role for prefix, role in ROLE_PREFIXES.items() if stem.startswith(prefix)), None)


def check_files(node: str, clip_type: ClipType, names: tuple[str, ...]) -> None:
    """The files must be one of each role the type needs (a NodeError-worthy SdrtError naming them)."""
    roles = [encoder_role(name) for name in names]
    if sorted(map(str, roles)) != sorted(clip_type.roles):
        wanted = " + ".join(ROLE_FILES[role] for role in sorted(clip_type.roles))
        raise SdrtError(
            f"{node}: {', '.join(names)} are not the text encoders of one {clip_type.family} export "
            f"(its type needs {wanted})"
        )


def family_of(folder) -> str:
    return Manifest.load(folder).family


def export_families(context) -> set[str]:
    """The families of the served model and --models-dir's exports."""
    families = {context.service.pipeline.manifest.family}
    for model in context.catalog.models():
        try:
            families.add(family_of(model.folder))
        except (OSError, SdrtError, ValueError):
            continue  # a broken folder is reported when it is loaded, not when listed
    return families


def encoder_files(context) -> list[str]:
    families = export_families(context)
    return [ROLE_FILES[role] for role in (CLIP_L, CLIP_G, T5) if families & set(ROLE_FAMILIES[role])]


def vae_files(context) -> list[str]:
    families = export_families(context)
    return [name for name, family in VAE_FILES.items() if family in families]


def family_pipeline(context, family: str, what: str):
    """An export of `family` for a component file: the served model if it is one, else a loaded
    one, else the first of --models-dir's (FLUX.1's exports share ae's VAE)."""
    served = context.service.pipeline
    if served.manifest.family == family:
        return served
    for pipeline in context.loaded_pipelines():
        if pipeline.manifest.family == family:
            return pipeline
    for model in context.catalog.models():
        try:
            if family_of(model.folder) == family:
                return context.pipeline_for(model.name)
        except (OSError, SdrtError, ValueError):
            continue
    raise SdrtError(f"{what}: this server has no {family} export (--models-dir) to take it from")
