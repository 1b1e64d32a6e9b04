"""What combines: the registry of request features (FEATURES) and the one table of refused
pairs (REFUSED), each with its reason.

`check_combinations(resolved, family)` runs once, at the end of resolving a request
(sdrt.runtime.request), when the LoRAs (the prompt's tags among them), the opened images and
the ControlNets are known: a feature the model's family lacks (`Family.features`, names from
this registry) is refused naming the family, then the first refused pair present, naming both
features; the error's `param` is the request field of the later feature in FEATURES. The
table's order is the order requests were refused in before it existed (hires fix, init
latents, seeds, DeepCache, refiner), so a request wrong in two ways reports what it did.

`render_markdown()` writes the tables of docs/combinations.md; `python -m
sdrt.runtime.features.combinations` rewrites that section (a test compares the two).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sdrt.errors import GenerationError
from sdrt.runtime.schedulers import COMFYUI, KDIFFUSION, SAMPLERS

if TYPE_CHECKING:
    from sdrt.runtime.families import Family
    from sdrt.runtime.request_resolve import ResolvedRequest


#: Samplers whose step calls the UNet more than once (Heun).
TWO_CALL_SAMPLERS = tuple(name for name, entry in SAMPLERS.items() if entry.cls.calls_per_step > 1)


@dataclass(frozen=True)
class Feature:
    """One feature a request can use: `param` is the request field that asks for it; `active`
    tells from the resolved request, None for what is chosen outside the request (`asked_by`
    says where). `per_family`: whether a family's `features` says where it runs (False: every
    family takes it)."""

    name: str
    display_name: str
    param: str
    asked_by: str
    active: Callable[[ResolvedRequest], bool] | None
    per_family: bool = True


FEATURES: dict[str, Feature] = {
    feature.name: feature
    for feature in (
        Feature(
            "img2img",
            "image-to-image",
            "init_image",
            "`init_image` without a mask",
            lambda r: r.image is not None and r.mask is None,
        ),
        Feature(
            "inpainting", "inpainting", "mask_image", "`init_image` with `mask_image`", lambda r: r.mask is not None
        ),
        Feature(
            "masked_area",
            "A1111's mask handling",
            "mask_options",
            "`mask_options` with a mask",
            lambda r: r.request.mask_options is not None and r.mask is not None,
        ),
        Feature("init_latents", "init latents", "init_latents", "`init_latents`", lambda r: r.init_latents is not None),
        Feature(
            "per_prompt_seeds",
            "one seed per prompt",
            "seed",
            "`seed` as a list",
            lambda r: r.per_prompt_seeds,
            per_family=False,
        ),
        Feature("hires", "the hires fix", "hires", "`hires`", lambda r: r.request.hires is not None),
        Feature("controlnet", "ControlNets", "controlnets", "`controlnets`", lambda r: bool(r.controls)),
        Feature("lora", "LoRAs", "loras", "`loras` or `<lora:...>` tags", lambda r: bool(r.loras)),
        Feature("embeddings", "textual-inversion embeddings", "embeddings", "`Pipeline.load(embeddings=...)`", None),
        Feature(
            "two_call_sampler",
            "a sampler calling the UNet twice a step",
            "sampler",
            f"`sampler`: {' or '.join(TWO_CALL_SAMPLERS)}",
            lambda r: r.request.sampler in TWO_CALL_SAMPLERS,
            per_family=False,
        ),
        Feature(
            "k_diffusion_sampler",
            "a k-diffusion sampler (A1111's rules)",
            "sampler",
            "`sampler`: k_euler, k_dpmpp_2m, ... (schedulers.K_SAMPLER_NAMES)",
            lambda r: SAMPLERS[r.request.sampler].family == KDIFFUSION,
            per_family=False,
        ),
        Feature(
            "comfyui_sampler",
            "ComfyUI's sampler (ComfyUI's rules)",
            "sampler",
            "`sampler`: comfy_euler, comfy_dpmpp_2m, ... (schedulers.COMFY_SAMPLER_NAMES)",
            lambda r: SAMPLERS[r.request.sampler].family == COMFYUI,
            per_family=False,
        ),
        Feature(
            "size_conditioning",
            "SDXL's size conditioning",
            "size_conditioning",
            "`size_conditioning`",
            lambda r: r.request.size_conditioning is not None,
        ),
        Feature(
            "refiner",
            "the SDXL refiner",
            "refiner_switch",
            "`refiner_switch`",
            lambda r: r.request.refiner_switch is not None,
        ),
        Feature("deepcache", "DeepCache", "deepcache", "`deepcache`", lambda r: r.request.deepcache is not None),
        Feature(
            "skip_layer_guidance",
            "skip-layer guidance",
            "skip_layer_guidance",
            "`skip_layer_guidance`",
            lambda r: r.request.skip_layer_guidance is not None,
        ),
        Feature(
            "first_block_cache",
            "the first-block cache",
            "cache",
            "`cache` first-block:THRESHOLD",
            lambda r: getattr(r.request.cache, "feature", None) == "first_block_cache",
        ),
        Feature(
            "taylorseer_cache",
            "the TaylorSeer cache",
            "cache",
            "`cache` taylorseer:SETTINGS",
            lambda r: getattr(r.request.cache, "feature", None) == "taylorseer_cache",
        ),
        Feature("tiny_vae", "the tiny VAE", "vae", '`vae="tiny"`', lambda r: r.request.vae == "tiny"),
        Feature("preview", "previews", "preview", "`Pipeline.run(preview=...)`", None),
        Feature(
            "reference_images",
            "reference images (FLUX.2 editing)",
            "reference_images",
            "`reference_images`",
            lambda r: r.request.reference_images is not None,
        ),
        Feature(
            "conditioning_lists",
            "ComfyUI's conditioning lists (areas, strengths, timestep ranges)",
            "conditionings",
            "`conditionings` (the ComfyUI API's ConditioningCombine, ConditioningSetArea, ...)",
            lambda r: r.request.conditionings is not None,
        ),
    )
}
FEATURE_NAMES = tuple(FEATURES)

_NOT_HIRES = "the hires fix is for text-to-image; this request has an init image"
_ONE_SEED = "one seed per prompt works for text-to-image only; give one seed"
_ONE_CONDITIONING = "conditioning lists run one ComfyUI sampler's pass (the ComfyUI API's KSampler)"

#: The refused pairs (earlier, later feature in FEATURES' order; the error takes the later one's field) -> why,
#: in the order they are checked.
REFUSED: dict[tuple[str, str], str] = {
    ("img2img", "hires"): _NOT_HIRES,
    ("inpainting", "hires"): _NOT_HIRES,
    ("init_latents", "hires"): "the hires fix is for text-to-image; this request has init latents",
    ("img2img", "init_latents"): "init latents are the image to start from: give them or an init image, not both",
    ("inpainting", "init_latents"): "init latents start image-to-image without a mask: inpaint from an init image",
    ("img2img", "per_prompt_seeds"): _ONE_SEED,
    ("inpainting", "per_prompt_seeds"): _ONE_SEED,
    ("init_latents", "per_prompt_seeds"): _ONE_SEED,
    ("controlnet", "deepcache"): "DeepCache does not run with ControlNets (their graphs are not cached)",
    ("lora", "deepcache"): "DeepCache does not run with LoRAs (their merged graphs are not cached)",
    ("refiner", "deepcache"): "DeepCache does not run with a refiner (its graphs are not cached)",
    ("two_call_sampler", "deepcache"): f"DeepCache does not run with {' or '.join(TWO_CALL_SAMPLERS)}, which calls "
    "the UNet twice a step",
    ("skip_layer_guidance", "taylorseer_cache"): "the cache counts each transformer call as a step, so it does not "
    "run with skip-layer guidance's extra calls",
    ("lora", "first_block_cache"): "the first-block cache does not run with LoRAs (the transformer's parts are not "
    "merged)",
    ("inpainting", "comfyui_sampler"): "ComfyUI's samplers inpaint by a latent noise mask (the ComfyUI API's "
    "SetLatentNoiseMask), not sdrt's mask_image blend: use a diffusers sampler",
    ("hires", "comfyui_sampler"): "ComfyUI's samplers run ComfyUI's two passes (the ComfyUI API's LatentUpscale), "
    "not A1111's hires fix: use a diffusers or k-diffusion sampler",
    ("comfyui_sampler", "refiner"): "ComfyUI's samplers run one model's schedule (the ComfyUI API's "
    "KSamplerAdvanced passes); a refiner is not supported with them",
    ("inpainting", "refiner"): "a refiner works with text-to-image and image-to-image; inpainting with a refiner is "
    "not supported yet",
    ("controlnet", "refiner"): "ControlNets with a refiner are not supported yet (diffusers' SDXL ControlNet "
    "pipelines have no refiner switch either)",
    ("hires", "conditioning_lists"): _ONE_CONDITIONING,
    ("controlnet", "conditioning_lists"): "ControlNets do not run with conditioning lists yet (ComfyUI crops the "
    "hint to each area)",
    ("refiner", "conditioning_lists"): _ONE_CONDITIONING,
    ("deepcache", "conditioning_lists"): "DeepCache does not run with conditioning lists (a model call per entry "
    "and area)",
}


def refusal(first: str, second: str) -> str | None:
    """Why two features do not combine (in either order), or None."""
    return REFUSED.get((first, second), REFUSED.get((second, first)))


def active_features(resolved: ResolvedRequest) -> list[Feature]:
    """The request's features, in FEATURES' order."""
    return [feature for feature in FEATURES.values() if feature.active is not None and feature.active(resolved)]


def check_combinations(resolved: ResolvedRequest, family: Family) -> None:
    """GenerationError on a feature `family` lacks, else on the first refused pair (one line
    naming both features, with the reason)."""
    active = {feature.name: feature for feature in active_features(resolved)}
    for feature in active.values():
        if feature.per_family and feature.name not in family.features:
            raise GenerationError(
                f"{feature.display_name} does not run on {family.display_name} models ({family.name})", feature.param
            )
    for (first, second), reason in REFUSED.items():
        if first in active and second in active:
            raise GenerationError(
                f"{active[first].display_name} and {active[second].display_name} do not combine: {reason}",
                active[second].param,
            )


# ---------------------------------------------------------------------------------------------- docs
BEGIN = "<!-- begin: generated by `python -m sdrt.runtime.features.combinations` -->"
END = "<!-- end: generated -->"
DOC = Path(__file__).resolve().parents[3] / "docs" / "combinations.md"


def render_markdown() -> str:
    """The features, the refused pairs, the feature x feature matrix and the feature x family
    table, in Markdown."""
    from sdrt.runtime.families import FAMILIES

    names = list(FEATURES)
    numbers = {pair: index for index, pair in enumerate(REFUSED, 1)}
    lines = ["### Features", "", "| feature | name | asked for by |", "| --- | --- | --- |"]
    lines += [f"| {f.display_name} | `{f.name}` | {f.asked_by} |" for f in FEATURES.values()]
    lines += ["", "### Refused pairs", "", "| # | feature | with | why | field |", "| --- | --- | --- | --- | --- |"]
    lines += [
        f"| {numbers[(a, b)]} | {FEATURES[a].display_name} | {FEATURES[b].display_name} | {why} | "
        f"`{FEATURES[b].param}` |"
        for (a, b), why in REFUSED.items()
    ]
    lines += [
        "",
        "### Feature x feature",
        "",
        "A number is a refused pair (above); an empty cell combines.",
        "",
        "| | " + " | ".join(f"`{n}`" for n in names) + " |",
        "| --- |" + " --- |" * len(names),
    ]
    for row in names:
        cells = ["-" if row == column else _pair_cell(numbers, row, column) for column in names]
        lines.append(f"| `{row}` | " + " | ".join(cells) + " |")
    lines += [
        "",
        "### Feature x family",
        "",
        "yes: the family runs it (`Family.features`; * every family does).",
        "",
        "| | " + " | ".join(f"{f.display_name} (`{f.name}`)" for f in FAMILIES.values()) + " |",
        "| --- |" + " --- |" * len(FAMILIES),
    ]
    for feature in FEATURES.values():
        cells = [
            "yes*" if not feature.per_family else "yes" if feature.name in family.features else "no"
            for family in FAMILIES.values()
        ]
        lines.append(f"| `{feature.name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _pair_cell(numbers: dict, row: str, column: str) -> str:
    number = numbers.get((row, column), numbers.get((column, row)))
    return "" if number is None else str(number)


def documented(text: str) -> str:
    """The generated section of docs/combinations.md's text."""
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def write_doc(path: Path = DOC) -> None:
    text = path.read_text(encoding="utf-8")
    head, rest = text.split(BEGIN, 1)
    path.write_text(f"{head}{BEGIN}\n{render_markdown()}{END}{rest.split(END, 1)[1]}", encoding="utf-8")


if __name__ == "__main__":
    write_doc()
