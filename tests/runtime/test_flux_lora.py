"""FLUX.1 LoRAs merged per request, against diffusers' FluxPipeline.load_lora_weights +
set_adapters on the tiny random model, with files this test writes (tests/support/
dit_lora_files.py): diffusers/PEFT through save_lora_weights, kohya, XLabs and BFL-named.

Tolerance (tests/support/images.py): the merged weights are the base plus the same fp32
products diffusers' PEFT layers add at run time; measured 6e-4/255 largest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from sdrt.cli import main
from sdrt.runtime.features.lora.files import read_lora
from sdrt.runtime.features.lora.tags import LoraRef
from sdrt.runtime.features.lora.weights_map import WeightsMap
from sdrt.runtime.manifest import TRANSFORMER, Manifest
from sdrt.runtime.pipeline import Pipeline
from support.dit_lora_files import (
    ALPHA,
    RANK,
    bfl_peft_lora,
    kohya_flux_lora,
    peft_lora,
    split_to_peft,
    xlabs_flux_lora,
)
from support.images import MAX_PIXEL_ERROR, assert_same_image

PROMPT = "a red fox in a snowy forest at dawn"
SETTINGS = dict(steps=3, seed=4, height=64, width=48, guidance_scale=3.5)


@pytest.fixture(scope="module")
def exported(exported_flux) -> Path:
    return exported_flux("dev")


@pytest.fixture(scope="module")
def source(tiny_flux) -> Path:
    return tiny_flux["dev"]


def _reference(source: Path):
    from diffusers import FluxPipeline

    pipeline = FluxPipeline.from_pretrained(source)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def reference(source):
    """One diffusers pipeline for the module: each use unloads its LoRAs (never fused) after."""
    return _reference(source)


@pytest.fixture(scope="module")
def loras(reference, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("flux-loras")
    return {
        "peft": peft_lora(reference, folder / "peft.safetensors", seed=1),
        "kohya": kohya_flux_lora(reference, folder / "kohya.safetensors", seed=2),
        "xlabs": xlabs_flux_lora(reference, folder / "xlabs.safetensors", seed=3),
    }


@pytest.fixture(scope="module")
def pipeline(exported, loras) -> Pipeline:
    return Pipeline.load(exported, lora_dir=loras["peft"].parent)


def reference_image(reference, adapters: list[tuple[Path | dict, float]], sequence: int) -> np.ndarray:
    names = [f"adapter{index}" for index in range(len(adapters))]
    for name, (lora, _) in zip(names, adapters):
        reference.load_lora_weights(lora if isinstance(lora, dict) else str(lora), adapter_name=name)
    reference.set_adapters(names, [weight for _, weight in adapters])
    try:
        return reference(
            PROMPT,
            num_inference_steps=SETTINGS["steps"],
            guidance_scale=SETTINGS["guidance_scale"],
            height=SETTINGS["height"],
            width=SETTINGS["width"],
            max_sequence_length=sequence,
            generator=torch.Generator().manual_seed(SETTINGS["seed"]),
            output_type="np",
        ).images
    finally:
        reference.unload_lora_weights()


def test_the_weights_maps_hold_every_linear_of_the_transformer_and_clip(exported, reference):
    manifest = Manifest.load(exported)
    for component, model in ((TRANSFORMER, reference.transformer), ("text_encoder", reference.text_encoder)):
        weights = WeightsMap.load(exported, component, manifest.components[component]).weights
        linears = {
            name.removeprefix("text_model.")
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear)
        }
        assert set(weights) == linears
    assert not manifest.components["text_encoder_2"].weights_map  # T5: diffusers puts no LoRA there


@pytest.mark.parametrize(("kind", "weight"), [("peft", 0.8), ("kohya", 0.7), ("xlabs", 1.0)])
def test_a_lora_equals_diffusers_load_lora_weights(pipeline, reference, loras, kind, weight):
    result = pipeline.generate(PROMPT, loras=[f"{loras[kind]}:{weight}"], **SETTINGS)
    assert result.warnings == []
    sequence = pipeline.manifest.flux.max_sequence_length
    assert_same_image(result.array, reference_image(reference, [(loras[kind], weight)], sequence))
    base = pipeline.generate(PROMPT, **SETTINGS).array
    assert np.abs(result.array - base).max() > 10 * MAX_PIXEL_ERROR  # the LoRA changed the image


def test_two_loras_by_tag_equal_diffusers_set_adapters_and_reuse_the_merged_session(pipeline, reference, loras):
    tagged = pipeline.generate(f"{PROMPT} <lora:peft:0.6> <lora:kohya:0.5>", **SETTINGS)
    sequence = pipeline.manifest.flux.max_sequence_length
    expected = reference_image(reference, [(loras["peft"], 0.6), (loras["kohya"], 0.5)], sequence)
    assert_same_image(tagged.array, expected)
    variants = pipeline.loras.variants(TRANSFORMER)
    builds = variants.builds
    again = pipeline.generate(f"{PROMPT} <lora:peft:0.6> <lora:kohya:0.5>", **SETTINGS)
    np.testing.assert_array_equal(again.array, tagged.array)
    assert variants.builds == builds  # the merged transformer came from the cache
    assert tagged.parameters["loras"] == {"peft": {"text": 0.6, "unet": 0.6}, "kohya": {"text": 0.5, "unet": 0.5}}


def test_a_lora_changes_clip_too(pipeline, loras):
    """The file's CLIP-L layers are merged (text weight); te=0 leaves CLIP as exported."""
    resolved = pipeline.loras._resolve(LoraRef(str(loras["kohya"])), False)
    assert set(resolved.layers) == {TRANSFORMER, "text_encoder"}
    both = pipeline.generate(f"{PROMPT} <lora:kohya:1>", **SETTINGS).array
    transformer_only = pipeline.generate(f"{PROMPT} <lora:kohya:0:1>", **SETTINGS).array
    assert np.abs(both - transformer_only).max() > MAX_PIXEL_ERROR


def test_fused_linear1_outer_layers_and_bfl_names_equal_diffusers_on_the_split_layers(pipeline, reference, tmp_path):
    """What diffusers 0.42 cannot load on a model of this size, compared with its PEFT loader
    on the layers split by the rule it uses: kohya's single-block linear1 (diffusers splits it at
    FLUX.1-dev's 3072 and 12288 rows), the layers outside the blocks (its conversion names them
    without the transformer prefix, so it drops them) and fal's BFL-named Kontext files (it
    expects 19 and 38 blocks)."""
    kohya = kohya_flux_lora(reference, tmp_path / "kohya.safetensors", 5, single=("linear1",), text=False)
    tensors = load_file(str(kohya))
    generator = torch.Generator().manual_seed(6)
    modules = dict(reference.transformer.named_modules())
    outer = {"img_in": "x_embedder", "time_in_in_layer": "time_text_embed.timestep_embedder.linear_1"}
    for name, module in outer.items():
        layer = modules[module]
        tensors[f"lora_unet_{name}.lora_down.weight"] = torch.randn(RANK, layer.in_features, generator=generator)
        tensors[f"lora_unet_{name}.lora_up.weight"] = torch.randn(layer.out_features, RANK, generator=generator)
        tensors[f"lora_unet_{name}.alpha"] = torch.tensor(ALPHA)
    save_file(tensors, str(kohya))
    # The reference: diffusers' own conversion of the double blocks, and linear1 and the outer
    # layers in its PEFT layout, alpha / rank in the down factor as its kohya conversion puts it.
    from diffusers import FluxPipeline

    blocks = {key: value for key, value in tensors.items() if "double_blocks" in key}
    peft = FluxPipeline.lora_state_dict(blocks)
    peft |= split_to_peft(
        {
            key.replace("lora_unet_single_blocks_0_linear1", "diffusion_model.single_blocks.0.linear1")
            .replace("lora_unet_single_blocks_1_linear1", "diffusion_model.single_blocks.1.linear1")
            .replace(".lora_down.", ".lora_A.")
            .replace(".lora_up.", ".lora_B."): value * (ALPHA / RANK if ".lora_down." in key else 1)
            for key, value in tensors.items()
            if "linear1" in key and not key.endswith(".alpha")
        },
        reference.transformer,
    )
    for name, module in outer.items():
        peft[f"transformer.{module}.lora_A.weight"] = tensors[f"lora_unet_{name}.lora_down.weight"] * (ALPHA / RANK)
        peft[f"transformer.{module}.lora_B.weight"] = tensors[f"lora_unet_{name}.lora_up.weight"]
    sequence = pipeline.manifest.flux.max_sequence_length
    got = pipeline.generate(PROMPT, loras=[f"{kohya}:0.8"], **SETTINGS)
    assert got.warnings == []
    assert_same_image(got.array, reference_image(reference, [(peft, 0.8)], sequence))
    bfl = bfl_peft_lora(reference, tmp_path / "kontext.safetensors", 7)
    got = pipeline.generate(PROMPT, loras=[f"{bfl}:0.6"], **SETTINGS)
    assert got.warnings == []
    assert_same_image(
        got.array,
        reference_image(reference, [(split_to_peft(load_file(str(bfl)), reference.transformer), 0.6)], sequence),
    )


def test_kohya_conversion_equals_diffusers_lora_state_dict(reference, loras, tmp_path):
    """Layer by layer, the deltas sdrt reads from a kohya file equal those of diffusers' own
    conversion (FluxPipeline.lora_state_dict), the final layer's swapped modulation included
    (alpha = rank there: diffusers' conversion leaves that alpha out)."""
    from diffusers import FluxPipeline

    tensors = load_file(str(loras["kohya"]))
    generator = torch.Generator().manual_seed(8)
    modules = dict(reference.transformer.named_modules())
    for stem, module in (("final_layer_adaLN_modulation_1", "norm_out.linear"), ("img_in", "x_embedder")):
        layer = modules[module]
        tensors[f"lora_unet_{stem}.lora_down.weight"] = torch.randn(RANK, layer.in_features, generator=generator)
        tensors[f"lora_unet_{stem}.lora_up.weight"] = torch.randn(layer.out_features, RANK, generator=generator)
        tensors[f"lora_unet_{stem}.alpha"] = torch.tensor(float(RANK))
    path = tmp_path / "kohya.safetensors"
    save_file(tensors, str(path))
    converted = FluxPipeline.lora_state_dict(dict(tensors))
    theirs = {
        key.removeprefix("transformer.")[: -len(".lora_A.weight")]: (
            converted[key.replace(".lora_A.", ".lora_B.")] @ converted[key]
        ).numpy()
        for key in converted
        if key.endswith(".lora_A.weight") and not key.startswith("text_encoder.")
    }
    ours = {
        layer.name: layer.delta((layer.up.shape[0], layer.down.shape[1]))
        for layer in read_lora(path).layers
        if layer.component == TRANSFORMER
    }
    assert set(ours) == set(theirs) and "norm_out.linear" in ours
    for module, delta in theirs.items():
        np.testing.assert_allclose(ours[module], delta, rtol=1e-5, atol=1e-6)


def test_comfyui_names_are_kohyas(loras, tmp_path):
    """ComfyUI saves kohya's FLUX LoRAs as diffusion_model.* and text_encoders.clip_l.transformer.*."""
    comfy = {
        key.replace("lora_unet_", "diffusion_model.", 1).replace(
            "lora_te1_", "text_encoders.clip_l.transformer.", 1
        ): value
        for key, value in load_file(str(loras["kohya"])).items()
    }
    path = tmp_path / "comfy.safetensors"
    save_file(comfy, str(path))
    assert {(layer.component, layer.name) for layer in read_lora(path).layers} == {
        (layer.component, layer.name) for layer in read_lora(loras["kohya"]).layers
    }


def test_t5_layers_are_reported_not_merged(pipeline, loras, tmp_path):
    """diffusers' FLUX loader puts no LoRA on T5 (kohya's lora_te2_ keys are left out): nor does sdrt."""
    tensors = load_file(str(loras["kohya"]))
    stem = "lora_te2_encoder_block_0_layer_0_SelfAttention_q"
    tensors[f"{stem}.lora_down.weight"], tensors[f"{stem}.lora_up.weight"] = torch.ones(RANK, 32), torch.ones(32, RANK)
    path = tmp_path / "with_t5.safetensors"
    save_file(tensors, str(path))
    got = pipeline.generate(PROMPT, loras=[f"{path}:0.7"], **SETTINGS)
    assert len(got.warnings) == 1 and "2 keys match no layer" in got.warnings[0] and stem in got.warnings[0]
    np.testing.assert_array_equal(
        got.array, pipeline.generate(PROMPT, loras=[f"{loras['kohya']}:0.7"], **SETTINGS).array
    )


# ---------------------------------------------------------------- bad input
def _cli(exported, *arguments):
    return CliRunner().invoke(
        main,
        [
            "generate",
            "--model",
            str(exported),
            "--steps",
            "1",
            "--height",
            "32",
            "--width",
            "32",
            "--quiet",
            *arguments,
        ],
    )


def test_sd_loras_on_flux_and_flux_loras_on_sd_are_one_line(exported, exported_tiny, loras, tmp_path):
    # kohya's SD names: a UNet layer, and a CLIP layer that fits FLUX's CLIP (SD 1.x and FLUX.1
    # share CLIP-L): refused all the same.
    sd_lora = tmp_path / "sd.safetensors"
    unet, clip = "lora_unet_down_blocks_0_attentions_0_proj_in", "lora_te_text_model_encoder_layers_0_mlp_fc1"
    shapes = {unet: (8, 8), clip: (64, 32)}  # (out, in); the tiny FLUX CLIP's fc1 is 32 -> 64
    factors = {}
    for stem, (rows, columns) in shapes.items():
        factors[f"{stem}.lora_down.weight"], factors[f"{stem}.lora_up.weight"] = (
            torch.ones(4, columns),
            torch.ones(rows, 4),
        )
    save_file(factors, str(sd_lora))
    unknown = tmp_path / "unknown.safetensors"
    save_file({"blocks.0.weight_a": torch.ones(2, 2), "blocks.0.weight_b": torch.ones(2, 2)}, str(unknown))
    out = str(tmp_path / "o.png")
    cases = [
        (exported, sd_lora, "its layers are a UNet's (SD 1.x, 2.x, SDXL)"),
        (exported_tiny("standard"), loras["xlabs"], "a diffusion transformer's (FLUX.1, SD3, Chroma)"),
        (exported, unknown, "is not a LoRA: none of its 2 keys is a LoRA layer"),
    ]
    for model, lora, message in cases:
        result = _cli(model, "a cat", "--lora", str(lora), "--out", out)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], result.output


def test_tensorrt_refits_the_flux_transformer_with_a_lora(exported, loras, monkeypatch, tmp_path):
    """The strict fake builds the transformer refittable in the mapped weights, a LoRA request
    refits them (the image equals the CPU path's with the same LoRA) and the base is restored."""
    import shutil

    import fake_tensorrt

    stats = fake_tensorrt.install(monkeypatch)
    model = tmp_path / "model"
    shutil.copytree(exported, model, ignore=shutil.ignore_patterns("tensorrt"))
    size = f"{SETTINGS['width']}x{SETTINGS['height']}"  # --static takes WIDTHxHEIGHT
    result = CliRunner().invoke(main, ["build", str(model), "--static", size, "--max-batch", "1"])
    assert result.exit_code == 0, result.output
    build = next(b for b in stats.builds if b["onnx"].endswith(f"{TRANSFORMER}/model.onnx"))
    mapped = WeightsMap.load(model, TRANSFORMER, Manifest.load(model).components[TRANSFORMER])
    assert set(build["refittable"]) == {w.initializer for w in mapped.weights.values()}
    cpu, trt = Pipeline.load(model), Pipeline.load(model, backend="tensorrt")
    adapters = [f"{loras['kohya']}:0.8"]
    with_lora = trt.generate(PROMPT, loras=adapters, **SETTINGS).array
    np.testing.assert_allclose(with_lora, cpu.generate(PROMPT, loras=adapters, **SETTINGS).array, atol=1e-5)
    base = trt.generate(PROMPT, **SETTINGS).array
    np.testing.assert_allclose(base, cpu.generate(PROMPT, **SETTINGS).array, atol=1e-5)
    assert np.abs(with_lora - base).max() > 10 * MAX_PIXEL_ERROR
    assert [r["component"] for r in stats.refits].count(TRANSFORMER) == 2  # the LoRA, then the base
