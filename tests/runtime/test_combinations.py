"""What combines (sdrt.runtime.features.combinations): every refused pair is refused when a
request is resolved, in one line naming both features, with the later feature's field; a
feature a family lacks is refused naming the family; every other pair resolves; the docs'
tables are the registry's."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from sdrt.errors import GenerationError
from sdrt.runtime.families import FAMILIES
from sdrt.runtime.families.sdxl import SizeConditioning
from sdrt.runtime.features import combinations
from sdrt.runtime.features.combinations import FEATURE_NAMES, FEATURES, REFUSED, active_features, render_markdown
from sdrt.runtime.features.controlnet.units import ControlUnit
from sdrt.runtime.features.deepcache import DeepCache
from sdrt.runtime.features.hires import HiresFix
from sdrt.runtime.features.inpaint_area import MaskOptions
from sdrt.runtime.features.skip_layers import SkipLayerGuidance
from sdrt.runtime.features.step_caches import FirstBlockCache, TaylorSeer
from sdrt.runtime.manifest import DEEP_FEATURE, UNET, UNET_SHALLOW, Manifest, TensorSpec, TinyVaeSpec
from sdrt.runtime.regions import Area, ConditioningEntries, ConditioningEntry
from sdrt.runtime.request import GenerationRequest

SDXL_ONLY = {"size_conditioning", "refiner"}


def photo() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))


def mask() -> Image.Image:
    values = np.zeros((64, 64), np.uint8)
    values[16:48, 16:48] = 255
    return Image.fromarray(values)


def settings_for(feature: str, manifest: Manifest) -> dict:
    """Request settings that use `feature` (and what it implies: a mask's handling needs a mask)."""
    latents = np.zeros(
        (
            1,
            manifest.latent_channels,
            manifest.native_height // manifest.vae_scale_factor,
            manifest.native_width // manifest.vae_scale_factor,
        ),
        np.float32,
    )
    return {
        "img2img": dict(init_image=photo()),
        "inpainting": dict(init_image=photo(), mask_image=mask()),
        "masked_area": dict(init_image=photo(), mask_image=mask(), mask_options=MaskOptions(blur_x=2)),
        "init_latents": dict(init_latents=latents),
        "per_prompt_seeds": dict(prompt=["a cat", "a dog"], seed=[1, 2]),
        "hires": dict(hires=HiresFix()),
        "controlnet": dict(controlnets=(ControlUnit("canny", image=photo()),)),
        "lora": dict(loras=("style:0.5",)),
        "two_call_sampler": dict(sampler="heun"),
        "k_diffusion_sampler": dict(sampler="k_heun"),
        "comfyui_sampler": dict(sampler="comfy_heun"),
        "size_conditioning": dict(size_conditioning=SizeConditioning()),
        "refiner": dict(refiner_switch=0.5),
        "deepcache": dict(deepcache=DeepCache(2)),
        "skip_layer_guidance": dict(skip_layer_guidance=SkipLayerGuidance(layers=(1,))),
        "first_block_cache": dict(cache=FirstBlockCache()),
        "taylorseer_cache": dict(cache=TaylorSeer()),
        "tiny_vae": dict(vae="tiny"),
        "reference_images": dict(reference_images=[photo()]),
        "conditioning_lists": dict(conditionings=ConditioningEntries((ConditioningEntry("a", Area(2, 2, 0, 0)),), ())),
    }[feature]


#: The features a feature's settings also use.
IMPLIES = {
    "masked_area": {"inpainting"},
    "k_diffusion_sampler": {"two_call_sampler"},
    "comfyui_sampler": {"two_call_sampler"},
}
#: Request modes that exclude each other (one set of settings cannot ask for two).
MODES = {"img2img", "inpainting", "masked_area"}
#: Features that name the request's one sampler, each of another family.
SAMPLER_FAMILIES = {"k_diffusion_sampler", "comfyui_sampler"}
REQUESTED = [name for name, feature in FEATURES.items() if feature.active is not None]


@pytest.fixture(scope="module")
def manifest(exported_tiny) -> Manifest:
    """The tiny SD export's manifest, as an export with every optional graph would have it
    (DeepCache's graphs, a tiny VAE): the pair, not a missing graph, is what gets refused."""
    loaded = Manifest.load(exported_tiny("standard"))
    unet = loaded.components[UNET]
    deep = TensorSpec(DEEP_FEATURE, "float32", ["batch", 32, "height", "width"])
    components = {**loaded.components, UNET: replace(unet, outputs=[*unet.outputs, deep]), UNET_SHALLOW: unet}
    return replace(loaded, components=components, tiny_vae=TinyVaeSpec(1.0, 0.0))


def manifest_for(manifest: Manifest, features) -> Manifest:
    return replace(manifest, family="sdxl") if SDXL_ONLY & set(features) else manifest


def resolve(manifest: Manifest, features, prompt="a cat"):
    settings = {"prompt": prompt, "steps": 2, "seed": 1}
    for name in features:
        settings.update(settings_for(name, manifest))
    return GenerationRequest(**settings).resolve(manifest_for(manifest, features))


def test_every_family_feature_is_a_registered_feature():
    gated = {name for name, feature in FEATURES.items() if feature.per_family}
    for family in FAMILIES.values():
        assert family.features <= gated, f"{family.name}: {sorted(family.features - gated)} not in FEATURES"
    assert gated == set().union(*(family.features for family in FAMILIES.values())), "a feature no family runs"


def test_each_refused_pair_is_in_the_features_order():
    for first, second in REFUSED:
        assert FEATURE_NAMES.index(first) < FEATURE_NAMES.index(second), (first, second)
        assert FEATURES[first].active is not None and FEATURES[second].active is not None


#: Features only a family without this SD manifest's others runs, tested with that family's own
#: (FLUX.2's reference images: tests/runtime/test_flux2.py; SD3's skip-layer guidance with TaylorSeer:
#: tests/runtime/test_step_caches_dit.py; the step caches, FLUX's:
#: tests/runtime/test_step_caches.py).
OWN_FAMILY_TESTS = {"reference_images", "skip_layer_guidance", "first_block_cache", "taylorseer_cache"}


@pytest.mark.parametrize("pair", [pair for pair in REFUSED if not OWN_FAMILY_TESTS & set(pair)], ids="+".join)
def test_a_refused_pair_is_one_line_naming_both(manifest, pair):
    with pytest.raises(GenerationError) as caught:
        resolve(manifest, pair)
    message = str(caught.value)
    first, second = FEATURES[pair[0]], FEATURES[pair[1]]
    assert first.display_name in message and second.display_name in message, message
    assert REFUSED[pair] in message and "\n" not in message
    assert caught.value.param == second.param


#: Features whose request settings also ask for another feature.
PREREQUISITES = {"masked_area": "inpainting"}
LACKING = [
    (name, feature)
    for name, family in FAMILIES.items()
    for feature in REQUESTED
    if FEATURES[feature].per_family and feature not in family.features
]


@pytest.mark.parametrize("family, feature", LACKING)
def test_a_feature_the_family_lacks_is_refused_naming_the_family(manifest, family, feature):
    settings = {"prompt": "a cat", "steps": 2, **settings_for(feature, manifest)}
    if family == "sdxl-refiner":
        settings.setdefault("init_image", photo())  # a refiner model refines an image
    with pytest.raises(GenerationError) as caught:
        GenerationRequest(**settings).resolve(replace(manifest, family=family))
    message = str(caught.value)
    assert family in message or FAMILIES[family].display_name in message, message
    # A feature that needs another (A1111's mask handling needs inpainting) is refused for
    # that one first when the family lacks both (FLUX.1).
    needed = PREREQUISITES.get(feature)
    refused = needed if needed is not None and needed not in FAMILIES[family].features else feature
    assert caught.value.param == FEATURES[refused].param and "\n" not in message


def test_the_sdxl_refiner_family_refuses_a_refiner_switch(manifest):
    with pytest.raises(GenerationError) as caught:
        GenerationRequest("a cat", steps=2, init_image=photo(), refiner_switch=0.5).resolve(
            replace(manifest, family="sdxl-refiner")
        )
    assert str(caught.value) == "the SDXL refiner does not run on SDXL refiner models (sdxl-refiner)"
    assert caught.value.param == "refiner_switch"


def _combinable(pair) -> bool:
    used = set(pair).union(*(IMPLIES.get(name, set()) for name in pair))
    if len(used & MODES) > 1 and not (used & MODES) <= {"masked_area", "inpainting"}:
        return False
    if len(used & SAMPLER_FAMILIES) > 1:  # one sampler per request
        return False
    return not any(combinations.refusal(a, b) for a, b in itertools.combinations(used, 2))


ALLOWED = [
    pair for pair in itertools.combinations(REQUESTED, 2) if _combinable(pair) and not OWN_FAMILY_TESTS & set(pair)
]


@pytest.mark.parametrize("pair", ALLOWED, ids="+".join)
def test_an_allowed_pair_resolves_with_both_features(manifest, pair):
    used = set(pair).union(*(IMPLIES.get(name, set()) for name in pair))
    assert {feature.name for feature in active_features(resolve(manifest, pair))} == used


def test_the_allowed_pairs_are_most_pairs():
    assert len(ALLOWED) > 50 and ("controlnet", "lora") in ALLOWED and ("lora", "deepcache") not in ALLOWED


def test_a_lora_tag_counts_as_a_lora(manifest):
    with pytest.raises(GenerationError, match="LoRAs and DeepCache do not combine") as caught:
        GenerationRequest("a cat <lora:style:0.5>", steps=2, deepcache=DeepCache(2)).resolve(manifest)
    assert caught.value.param == "deepcache"
    GenerationRequest("a cat <lora:style:0.5>", steps=2, plain_prompt=True, deepcache=DeepCache(2)).resolve(manifest)


def test_the_first_refused_pair_of_the_table_is_reported(manifest):
    """As before the table: LoRAs before the sampler for DeepCache, the hires fix before the seeds."""
    with pytest.raises(GenerationError, match="LoRAs and DeepCache"):
        resolve(manifest, ["lora", "two_call_sampler", "deepcache"])
    with pytest.raises(GenerationError, match="image-to-image and the hires fix") as caught:
        resolve(manifest, ["img2img", "per_prompt_seeds", "hires"])
    assert caught.value.param == "hires"


def test_the_hires_fix_of_a_pipeline_checks_its_request_first(exported_tiny):
    from sdrt.runtime.pipeline import Pipeline

    with pytest.raises(GenerationError, match="the hires fix is for text-to-image") as caught:
        Pipeline.load(exported_tiny("standard")).generate("a cat", steps=1, hires=HiresFix(), init_image=photo())
    assert caught.value.param == "hires"


def test_docs_combinations_md_is_the_rendered_table():
    text = combinations.DOC.read_text(encoding="utf-8")
    assert combinations.documented(text) == render_markdown(), (
        "docs/combinations.md is out of date: run `python -m sdrt.runtime.features.combinations`"
    )
    for reason in REFUSED.values():
        assert reason in text


def test_the_rendered_table_has_every_feature_and_family():
    text = render_markdown()
    for name in FEATURES:
        assert f"| `{name}` |" in text
    for family in FAMILIES.values():
        assert f"(`{family.name}`)" in text
