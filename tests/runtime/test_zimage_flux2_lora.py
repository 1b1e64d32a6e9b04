"""Z-Image and FLUX.2 [klein] LoRAs merged per request, against diffusers' load_lora_weights +
set_adapters on the tiny random models (ZImagePipeline / Flux2KleinPipeline: the transformer
only, as their loaders change), with PEFT files this test writes through the pipeline classes'
own save_lora_weights (tests/support/dit_lora_files.py). Tolerance as
tests/runtime/test_flux_lora.py's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sdrt.errors import GenerationError
from sdrt.runtime.features.lora.weights_map import WeightsMap
from sdrt.runtime.manifest import TRANSFORMER
from sdrt.runtime.pipeline import Pipeline
from support.dit_lora_files import ALPHA, flux2_native_lora, peft_lora
from support.images import MAX_PIXEL_ERROR, assert_same_image

PROMPT = "a red fox in a snowy forest at dawn"
SETTINGS = dict(steps=2, seed=3, height=64, width=48)


def _reference(folder: Path, class_name: str):
    import diffusers

    pipeline = getattr(diffusers, class_name).from_pretrained(folder)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _diffusers_image(reference, adapters: list[tuple[Path, float]], guidance_scale: float, **extra) -> np.ndarray:
    names = [f"adapter{index}" for index in range(len(adapters))]
    for name, (path, _) in zip(names, adapters):
        reference.load_lora_weights(str(path), adapter_name=name)
    reference.set_adapters(names, [weight for _, weight in adapters])
    try:
        return reference(
            prompt=PROMPT,
            num_inference_steps=SETTINGS["steps"],
            guidance_scale=guidance_scale,
            height=SETTINGS["height"],
            width=SETTINGS["width"],
            generator=torch.Generator().manual_seed(SETTINGS["seed"]),
            output_type="np",
            **extra,
        ).images
    finally:
        reference.unload_lora_weights()


def _check(pipeline: Pipeline, reference, adapters: list[tuple[Path, float]], guidance_scale: float, **extra) -> None:
    manifest = pipeline.manifest
    assert manifest.model_family.lora_components == (TRANSFORMER,)
    weights = WeightsMap.load(pipeline.folder, TRANSFORMER, manifest.components[TRANSFORMER]).weights
    linears = {name for name, module in reference.transformer.named_modules() if isinstance(module, torch.nn.Linear)}
    assert linears <= set(weights)  # every layer a LoRA file names, under diffusers' module path
    loras = [f"{path}:{weight}" for path, weight in adapters]
    got = pipeline.generate(PROMPT, loras=loras, guidance_scale=guidance_scale, **SETTINGS)
    assert got.warnings == []
    expected = _diffusers_image(reference, adapters, guidance_scale, **extra)
    assert expected.std() > 0.01
    assert_same_image(got.array, expected)
    base = pipeline.generate(PROMPT, guidance_scale=guidance_scale, **SETTINGS).array
    assert np.abs(got.array - base).max() > 10 * MAX_PIXEL_ERROR


# ---------------------------------------------------------------- Z-Image
@pytest.fixture(scope="module")
def zimage(exported_zimage) -> Pipeline:
    return Pipeline.load(exported_zimage)


@pytest.fixture(scope="module")
def zimage_reference(tiny_zimage):
    return _reference(tiny_zimage, "ZImagePipeline")


def test_a_zimage_lora_equals_zimage_pipeline(zimage, zimage_reference, tmp_path):
    lora = peft_lora(zimage_reference, tmp_path / "zimage.safetensors", seed=5, text_encoders=())
    _check(zimage, zimage_reference, [(lora, 0.8)], guidance_scale=0.0)


@pytest.mark.slow
def test_two_zimage_loras_with_cfg_equal_set_adapters(zimage, zimage_reference, tmp_path):
    first = peft_lora(zimage_reference, tmp_path / "first.safetensors", seed=7, text_encoders=())
    second = peft_lora(zimage_reference, tmp_path / "second.safetensors", seed=8, text_encoders=())
    _check(zimage, zimage_reference, [(first, 0.6), (second, -0.4)], guidance_scale=3.0)


def _community_layout(peft: Path, out: Path, kohya: bool) -> Path:
    """The same layers as kohya's (`lora_unet_<module flattened>.lora_down/up`) or ComfyUI's
    (`diffusion_model.<module>.lora_A/B`) Z-Image files name them, with the rank's alpha."""
    tensors = {}
    with safe_open(str(peft), "pt") as handle:
        for key in handle.keys():
            module, factor = key.removeprefix("transformer.").rsplit(".lora_", 1)
            stem = "lora_unet_" + module.replace(".", "_") if kohya else "diffusion_model." + module
            kind = {"A.weight": "down", "B.weight": "up"}[factor] if kohya else factor.split(".")[0]
            tensors[f"{stem}.lora_{kind}.weight"] = handle.get_tensor(key)
            tensors[f"{stem}.alpha"] = torch.tensor(ALPHA)
    save_file(tensors, str(out))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kohya", [True, False])
def test_a_community_zimage_lora_equals_diffusers_conversion(zimage, zimage_reference, tmp_path, kohya):
    peft = peft_lora(zimage_reference, tmp_path / "peft.safetensors", seed=9, text_encoders=())
    lora = _community_layout(peft, tmp_path / "community.safetensors", kohya)
    _check(zimage, zimage_reference, [(lora, 0.7)], guidance_scale=0.0)


def test_a_flux1_lora_on_zimage_is_one_error_naming_the_field(zimage, tmp_path):
    """A kohya FLUX.1 file (renamed to FLUX.1's diffusers layers, none of which Z-Image has)."""
    flux = tmp_path / "flux.safetensors"
    stem = "lora_unet_double_blocks_0_img_attn_proj"
    save_file({f"{stem}.lora_down.weight": torch.ones(4, 7), f"{stem}.lora_up.weight": torch.ones(7, 4)}, str(flux))
    with pytest.raises(GenerationError, match="Z-Image.*another model architecture") as raised:
        zimage.generate(PROMPT, loras=[str(flux)], guidance_scale=0.0, **SETTINGS)
    assert raised.value.param == "loras" and "\n" not in str(raised.value)


# ---------------------------------------------------------------- FLUX.2 [klein]
@pytest.fixture(scope="module")
def klein(exported_flux2_klein) -> Pipeline:
    return Pipeline.load(exported_flux2_klein)


@pytest.fixture(scope="module")
def klein_reference(tiny_flux2_klein):
    return _reference(tiny_flux2_klein, "Flux2KleinPipeline")


def test_a_flux2_klein_lora_equals_flux2_klein_pipeline(klein, klein_reference, tmp_path):
    lora = peft_lora(klein_reference, tmp_path / "klein.safetensors", seed=6, text_encoders=())
    sequence = klein.manifest.flux2.max_sequence_length
    _check(klein, klein_reference, [(lora, 0.8)], guidance_scale=4.0, max_sequence_length=sequence)


def test_kohya_and_ai_toolkit_klein_loras_equal_flux2_lora_loader(klein, klein_reference, tmp_path):
    """FLUX.2's BFL names, fused q/k/v split, a single block's linear1 kept whole: a kohya file
    (flattened, lora_down/up, alpha) and an ai-toolkit one (diffusion_model. + dotted, lora_A/B,
    the shared modulations and the final layer's too) in one request, against
    Flux2LoraLoaderMixin.load_lora_weights of both + set_adapters."""
    kohya = flux2_native_lora(klein_reference, tmp_path / "kohya.safetensors", seed=11, style="kohya")
    toolkit = flux2_native_lora(klein_reference, tmp_path / "toolkit.safetensors", seed=12, style="ai-toolkit")
    sequence = klein.manifest.flux2.max_sequence_length
    _check(klein, klein_reference, [(kohya, 0.7), (toolkit, -0.5)], guidance_scale=4.0, max_sequence_length=sequence)


@pytest.mark.slow
def test_a_peft_bfl_named_klein_lora_equals_flux2_lora_loader(klein, klein_reference, tmp_path):
    """PEFT's base_model.model. + BFL names, which diffusers renames to ai-toolkit's."""
    lora = flux2_native_lora(klein_reference, tmp_path / "peft-bfl.safetensors", seed=13, style="peft")
    sequence = klein.manifest.flux2.max_sequence_length
    _check(klein, klein_reference, [(lora, 0.9)], guidance_scale=1.0, max_sequence_length=sequence)
