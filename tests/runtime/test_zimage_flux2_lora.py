"""Z-Image and FLUX.2 [klein] LoRAs merged per request, against diffusers' load_lora_weights +
set_adapters on the tiny random models (ZImagePipeline / Flux2KleinPipeline: the transformer
only, as their loaders change), with PEFT files this test writes through the pipeline classes'
own save_lora_weights (tests/support/dit_lora_files.py). Tolerance as
tests/runtime/test_flux_lora.py's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sdrt.runtime.features.lora.weights_map import WeightsMap
from sdrt.runtime.manifest import TRANSFORMER, Manifest
from sdrt.runtime.pipeline import Pipeline
from support.dit_lora_files import peft_lora
from support.images import MAX_PIXEL_ERROR, assert_same_image

PROMPT = "a red fox in a snowy forest at dawn"
SETTINGS = dict(steps=2, seed=3, height=64, width=48)


def _reference(folder: Path, class_name: str):
    import diffusers

    pipeline = getattr(diffusers, class_name).from_pretrained(folder)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _diffusers_image(reference, lora: Path, weight: float, guidance_scale: float, **extra) -> np.ndarray:
    reference.load_lora_weights(str(lora), adapter_name="style")
    reference.set_adapters(["style"], [weight])
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


def _check(exported: Path, reference, lora: Path, weight: float, guidance_scale: float, **extra) -> None:
    manifest = Manifest.load(exported)
    assert manifest.model_family.lora_components == (TRANSFORMER,)
    weights = WeightsMap.load(exported, TRANSFORMER, manifest.components[TRANSFORMER]).weights
    linears = {name for name, module in reference.transformer.named_modules() if isinstance(module, torch.nn.Linear)}
    assert linears <= set(weights)  # every layer a LoRA file names, under diffusers' module path
    pipeline = Pipeline.load(exported)
    got = pipeline.generate(PROMPT, loras=[f"{lora}:{weight}"], guidance_scale=guidance_scale, **SETTINGS)
    assert got.warnings == []
    expected = _diffusers_image(reference, lora, weight, guidance_scale, **extra)
    assert expected.std() > 0.01
    assert_same_image(got.array, expected)
    base = pipeline.generate(PROMPT, guidance_scale=guidance_scale, **SETTINGS).array
    assert np.abs(got.array - base).max() > 10 * MAX_PIXEL_ERROR


def test_a_zimage_lora_equals_zimage_pipeline(exported_zimage, tiny_zimage, tmp_path):
    reference = _reference(tiny_zimage, "ZImagePipeline")
    lora = peft_lora(reference, tmp_path / "zimage.safetensors", seed=5, text_encoders=())
    _check(exported_zimage, reference, lora, 0.8, guidance_scale=0.0)


def test_a_flux2_klein_lora_equals_flux2_klein_pipeline(exported_flux2_klein, tiny_flux2_klein, tmp_path):
    reference = _reference(tiny_flux2_klein, "Flux2KleinPipeline")
    lora = peft_lora(reference, tmp_path / "klein.safetensors", seed=6, text_encoders=())
    sequence = Manifest.load(exported_flux2_klein).flux2.max_sequence_length
    _check(exported_flux2_klein, reference, lora, 0.8, guidance_scale=4.0, max_sequence_length=sequence)
