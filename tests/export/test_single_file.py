"""Single-file checkpoints (the original LDM / AUTOMATIC1111 layout): sdrt's writer is the exact
inverse of diffusers' reader, and `sdrt export model.safetensors --config DIR` gives the same
engines and images as exporting the diffusers folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import diffusers_pipeline
from sdrt.cli import main
from sdrt.export.ldm_checkpoint import ldm_state_dict, save_ldm_checkpoint, unet_key, vae_key
from sdrt.export.sources import load_pipeline
from sdrt.runtime.pipeline import Pipeline


@pytest.mark.parametrize("kind", ["standard", "inpaint", "v_prediction"])
def test_checkpoint_round_trips_through_diffusers_single_file_loader(tiny_models, tmp_path, kind):
    original = diffusers_pipeline("StableDiffusionPipeline", tiny_models[kind])
    checkpoint = save_ldm_checkpoint(original, tmp_path / "model.safetensors")
    loaded = load_pipeline(str(checkpoint), config=str(tiny_models[kind]))
    for component in ("unet", "vae", "text_encoder"):
        expected = getattr(original, component).state_dict()
        got = getattr(loaded, component).state_dict()
        assert set(got) == set(expected), component
        for key, tensor in expected.items():
            assert torch.equal(got[key].reshape(tensor.shape), tensor), f"{component}.{key}"


def test_names_follow_the_sd15_layout():
    """Spot checks against names every SD 1.5 checkpoint has (layers_per_block 2, four blocks;
    the up blocks with attention keep their upsampler in slot 2)."""
    with_attention = {1, 2, 3}
    assert unet_key("down_blocks.0.downsamplers.0.conv.weight", 2, with_attention) == "input_blocks.3.0.op.weight"
    assert unet_key("down_blocks.1.attentions.0.proj_in.weight", 2, with_attention) == "input_blocks.4.1.proj_in.weight"
    assert unet_key("down_blocks.3.resnets.1.conv1.weight", 2, with_attention) == "input_blocks.11.0.in_layers.2.weight"
    assert unet_key("up_blocks.0.upsamplers.0.conv.weight", 2, with_attention) == "output_blocks.2.1.conv.weight"
    assert unet_key("up_blocks.1.upsamplers.0.conv.weight", 2, with_attention) == "output_blocks.5.2.conv.weight"
    assert unet_key("mid_block.resnets.1.conv2.weight", 2, with_attention) == "middle_block.2.out_layers.3.weight"
    assert (
        unet_key("up_blocks.3.resnets.2.conv_shortcut.weight", 2, with_attention)
        == "output_blocks.11.0.skip_connection.weight"
    )
    assert vae_key("decoder.up_blocks.0.upsamplers.0.conv.weight", 4) == "decoder.up.3.upsample.conv.weight"
    assert (
        vae_key("encoder.down_blocks.1.resnets.0.conv_shortcut.weight", 4)
        == "encoder.down.1.block.0.nin_shortcut.weight"
    )
    assert vae_key("decoder.mid_block.attentions.0.to_out.0.weight", 4) == "decoder.mid.attn_1.proj_out.weight"
    assert unet_key("add_embedding.linear_1.weight", 2, with_attention) == "label_emb.0.0.weight"  # SDXL
    with pytest.raises(ValueError, match="no LDM name"):
        unet_key("class_embedding.linear_1.weight", 2, with_attention)


def test_vae_attention_weights_are_1x1_convolutions(tiny_models):
    state = ldm_state_dict(diffusers_pipeline("StableDiffusionPipeline", tiny_models["standard"]))
    assert state["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4
    assert state["first_stage_model.encoder.mid.attn_1.q.bias"].ndim == 1
    assert "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight" in state


def test_export_from_a_single_file_equals_export_from_the_folder(tiny_models, exported_tiny, tmp_path):
    original = diffusers_pipeline("StableDiffusionPipeline", tiny_models["standard"])
    checkpoint = save_ldm_checkpoint(original, tmp_path / "model.safetensors")
    out = tmp_path / "from-checkpoint"
    result = CliRunner().invoke(
        main, ["export", str(checkpoint), "--config", str(tiny_models["standard"]), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    settings = dict(prompt="a photo of a cat", steps=3, seed=7)
    got = Pipeline.load(out).generate(**settings).array
    expected = Pipeline.load(exported_tiny("standard")).generate(**settings).array
    np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("kind,embedders", [("base", 2), ("refiner", 1)])
def test_sdxl_checkpoint_round_trips_and_is_recognized_from_its_names(tiny_sdxl, tmp_path, kind, embedders):
    from sdrt.export.sources import _pipeline_class_for_checkpoint

    original = load_pipeline(str(tiny_sdxl[kind]))
    checkpoint = save_ldm_checkpoint(original, tmp_path / "sdxl.safetensors")
    state = ldm_state_dict(original)
    assert {key.split(".")[2] for key in state if key.startswith("conditioner.")} == set(map(str, range(embedders)))
    bigg = f"conditioner.embedders.{embedders - 1}.model."
    assert state[bigg + "text_projection"].shape == (48, 40)  # [width, projection], OpenCLIP's way
    assert state[bigg + "transformer.resblocks.0.attn.in_proj_weight"].shape == (3 * 48, 48)
    expected_class = "StableDiffusionXLPipeline" if kind == "base" else "StableDiffusionXLImg2ImgPipeline"
    assert _pipeline_class_for_checkpoint(checkpoint, None) == expected_class
    loaded = load_pipeline(str(checkpoint), config=str(tiny_sdxl[kind]))
    for component in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if getattr(original, component) is None:
            assert getattr(loaded, component) is None
            continue
        expected, got = getattr(original, component).state_dict(), getattr(loaded, component).state_dict()
        assert set(got) == set(expected), component
        for key, tensor in expected.items():
            assert torch.equal(got[key].reshape(tensor.shape), tensor), f"{component}.{key}"


@pytest.mark.slow  # 31 s: SDXL's names round-trip cheaply by default; its SD 1.5 twin runs by default
def test_sdxl_export_from_a_single_file_equals_export_from_the_folder(tiny_sdxl, exported_sdxl, tmp_path):
    checkpoint = save_ldm_checkpoint(load_pipeline(str(tiny_sdxl["base"])), tmp_path / "sdxl.safetensors")
    out = tmp_path / "from-file"
    result = CliRunner().invoke(
        main, ["export", str(checkpoint), "--config", str(tiny_sdxl["base"]), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    settings = dict(prompt="a photo of a cat", steps=4, seed=2, guidance_scale=5.0)
    expected = Pipeline.load(exported_sdxl("base")).generate(**settings).array
    np.testing.assert_array_equal(Pipeline.load(out).generate(**settings).array, expected)
