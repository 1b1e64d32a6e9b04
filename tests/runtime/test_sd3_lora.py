"""SD3/SD3.5 and Chroma LoRAs merged per request, against diffusers' load_lora_weights +
set_adapters on the tiny random models (StableDiffusion3Pipeline: the transformer and both
CLIP encoders; ChromaPipeline: the transformer), with files this test writes through the
pipeline classes' own save_lora_weights (tests/support/dit_lora_files.py). Tolerance as
tests/runtime/test_flux_lora.py's.

diffusers 0.42 reads SD3 LoRAs in its own layout only (PEFT's lora_A/lora_B, and its older
lora.down/lora.up that it converts): its SD3 loader converts no kohya names, so none are
compared here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sdrt.errors import GenerationError
from sdrt.runtime.features.lora.tags import LoraRef
from sdrt.runtime.manifest import TRANSFORMER, Manifest
from sdrt.runtime.pipeline import Pipeline
from support.dit_lora_files import peft_lora
from support.images import MAX_PIXEL_ERROR, assert_same_image
from tests.conftest import sd3_reference

PROMPT = "a red fox in a snowy forest at dawn"
SETTINGS = dict(steps=2, seed=3, height=64, width=48, guidance_scale=5.0)
SD3_CLIPS = ("text_encoder", "text_encoder_2")


def _image(reference, adapters: list[tuple[Path, float]], **extra) -> np.ndarray:
    names = [f"adapter{index}" for index in range(len(adapters))]
    for name, (path, _) in zip(names, adapters):
        reference.load_lora_weights(str(path), adapter_name=name)
    reference.set_adapters(names, [weight for _, weight in adapters])
    try:
        return reference(
            PROMPT,
            num_inference_steps=SETTINGS["steps"],
            guidance_scale=SETTINGS["guidance_scale"],
            height=SETTINGS["height"],
            width=SETTINGS["width"],
            generator=torch.Generator().manual_seed(SETTINGS["seed"]),
            output_type="np",
            **extra,
        ).images
    finally:
        reference.unload_lora_weights()


def _old_diffusers_layout(path: Path, out: Path) -> Path:
    """The same layers in diffusers' older lora.down/lora.up layout (no metadata: scale 1)."""
    with safe_open(str(path), "pt") as handle:
        tensors = {
            key.replace(".lora_A.", ".lora.down.").replace(".lora_B.", ".lora.up."): handle.get_tensor(key)
            for key in handle.keys()
            if key.startswith("transformer.")
        }
    save_file(tensors, str(out))
    return out


# ---------------------------------------------------------------- SD3 / SD3.5
@pytest.fixture(scope="module")
def sd3_exported(exported_sd3) -> Path:
    return exported_sd3("t5")


@pytest.fixture(scope="module")
def sd3_diffusers(tiny_sd3):
    return sd3_reference("StableDiffusion3Pipeline", tiny_sd3)


@pytest.fixture(scope="module")
def sd3_loras(sd3_diffusers, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("sd3-loras")
    peft = peft_lora(sd3_diffusers, folder / "peft.safetensors", seed=1, text_encoders=SD3_CLIPS)
    return {
        "peft": peft,
        "other": peft_lora(sd3_diffusers, folder / "other.safetensors", seed=2, text_encoders=()),
        "old": _old_diffusers_layout(peft, folder / "old.safetensors"),
    }


@pytest.fixture(scope="module")
def sd3(sd3_exported) -> Pipeline:
    return Pipeline.load(sd3_exported)


def test_sd3_weights_maps_hold_every_linear(sd3_exported, sd3_diffusers):
    from sdrt.runtime.features.lora.weights_map import WeightsMap

    manifest = Manifest.load(sd3_exported)
    for component in (TRANSFORMER, *SD3_CLIPS):
        weights = WeightsMap.load(sd3_exported, component, manifest.components[component]).weights
        model = getattr(sd3_diffusers, component)
        linears = {n.removeprefix("text_model.") for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        assert linears <= set(weights)
    assert not manifest.components["text_encoder_3"].weights_map  # T5: diffusers puts no LoRA there


@pytest.mark.parametrize(("kind", "weight"), [("peft", 0.8), pytest.param("old", 0.6, marks=pytest.mark.slow)])
def test_an_sd3_lora_equals_diffusers(sd3, sd3_diffusers, sd3_loras, kind, weight):
    got = sd3.generate(PROMPT, loras=[f"{sd3_loras[kind]}:{weight}"], **SETTINGS)
    assert got.warnings == []
    assert_same_image(got.array, _image(sd3_diffusers, [(sd3_loras[kind], weight)]))
    base = sd3.generate(PROMPT, **SETTINGS).array
    assert np.abs(got.array - base).max() > 10 * MAX_PIXEL_ERROR


def test_two_sd3_loras_equal_set_adapters_and_both_clips_change(sd3, sd3_diffusers, sd3_loras):
    loras = [f"{sd3_loras['peft']}:0.7", f"{sd3_loras['other']}:0.5"]
    got = sd3.generate(PROMPT, loras=loras, **SETTINGS)
    assert_same_image(got.array, _image(sd3_diffusers, [(sd3_loras["peft"], 0.7), (sd3_loras["other"], 0.5)]))
    resolved = sd3.loras._resolve(LoraRef(str(sd3_loras["peft"])), False)
    assert set(resolved.layers) == {TRANSFORMER, *SD3_CLIPS}


def test_a_flux_lora_on_sd3_is_one_error_naming_the_field(sd3, tmp_path):
    """A kohya FLUX.1 file (its blocks' names, a width SD3's layers do not have)."""
    flux = tmp_path / "flux.safetensors"
    stem = "lora_unet_double_blocks_0_img_attn_qkv"
    save_file({f"{stem}.lora_down.weight": torch.ones(4, 7), f"{stem}.lora_up.weight": torch.ones(21, 4)}, str(flux))
    with pytest.raises(
        GenerationError, match="this Stable Diffusion 3 model.*for another model architecture"
    ) as raised:
        sd3.generate(PROMPT, loras=[str(flux)], **SETTINGS)
    assert raised.value.param == "loras" and "\n" not in str(raised.value)


# ---------------------------------------------------------------- Chroma
def test_a_chroma_lora_equals_chroma_pipeline(exported_chroma, tiny_chroma, tmp_path):
    import diffusers

    reference = diffusers.ChromaPipeline.from_pretrained(tiny_chroma)
    reference.set_progress_bar_config(disable=True)
    lora = peft_lora(reference, tmp_path / "chroma.safetensors", seed=4, text_encoders=())
    chroma = Pipeline.load(exported_chroma)
    sequence = chroma.manifest.flux.max_sequence_length
    got = chroma.generate(PROMPT, loras=[f"{lora}:0.9"], **SETTINGS)
    assert got.warnings == []
    assert_same_image(got.array, _image(reference, [(lora, 0.9)], max_sequence_length=sequence))
    assert np.abs(got.array - chroma.generate(PROMPT, **SETTINGS).array).max() > 10 * MAX_PIXEL_ERROR
    assert json.loads(Manifest.load(exported_chroma).to_json())["components"][TRANSFORMER]["weights_map"]
