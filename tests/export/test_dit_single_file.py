"""Single-file FLUX.1 and SD3/SD3.5 checkpoints (transformer in the BFL / SAI key layout) load
through diffusers' from_single_file with --config giving everything else, and export like the folder."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from sdrt.cli import main
from sdrt.export.dit_single_file import FULL_CHECKPOINT_PREFIX, load_dit_transformer
from sdrt.export.sources import load_pipeline
from sdrt.runtime.pipeline import Pipeline
from support.dit_checkpoints import flux_original_state_dict, sd3_original_state_dict

#: diffusers' FLUX converter splits single blocks' linear1 at FLUX.1's real width (inner_dim 3072,
#: MLP ratio 4, single_file_utils.convert_flux_transformer_checkpoint_to_diffusers); the tiny model is narrower.
FLUX1_SPLIT = (3072, 3072, 3072, 4 * 3072)


@pytest.fixture
def tiny_flux_split(monkeypatch, tiny_flux):
    """Run diffusers' own FLUX converter on the tiny model: only its hard-coded split sizes change."""
    from diffusers.loaders import single_file_utils

    config = json.loads((tiny_flux["dev"] / "transformer" / "config.json").read_text(encoding="utf-8"))
    width = config["num_attention_heads"] * config["attention_head_dim"]
    tiny = (width, width, width, 4 * width)

    def split(tensor, sizes, dim=0):
        return torch.split(tensor, tiny if tuple(sizes) == FLUX1_SPLIT else sizes, dim=dim)

    proxy = types.SimpleNamespace(**{name: getattr(torch, name) for name in dir(torch) if not name.startswith("__")})
    proxy.split = split
    monkeypatch.setattr(single_file_utils, "torch", proxy)


def _assert_same_weights(loaded, original):
    expected, got = original.state_dict(), loaded.state_dict()
    assert set(got) == set(expected)
    for key, tensor in expected.items():
        assert torch.equal(got[key], tensor), key


def _sd3_transformer(folder):
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel.from_pretrained(folder, subfolder="transformer")


def test_sd3_single_file_loads_the_same_transformer(tiny_sd3, tmp_path):
    original = _sd3_transformer(tiny_sd3)
    checkpoint = tmp_path / "sd3.safetensors"
    save_file(sd3_original_state_dict(original), str(checkpoint))
    _assert_same_weights(load_dit_transformer(checkpoint, "sd3", str(tiny_sd3)), original)


def test_flux_single_file_loads_the_same_transformer(tiny_flux, tiny_flux_split, tmp_path):
    from diffusers import FluxTransformer2DModel

    original = FluxTransformer2DModel.from_pretrained(tiny_flux["dev"], subfolder="transformer")
    checkpoint = tmp_path / "flux.safetensors"  # a full checkpoint's transformer prefix
    save_file(flux_original_state_dict(original, FULL_CHECKPOINT_PREFIX), str(checkpoint))
    loaded = load_pipeline(str(checkpoint), config=str(tiny_flux["dev"]))
    assert type(loaded).__name__ == "FluxPipeline"
    _assert_same_weights(loaded.transformer, original)


def test_single_file_errors_are_one_line(tiny_flux, tiny_sd3, tmp_path):
    sd3_file, other = tmp_path / "sd3.safetensors", tmp_path / "other.safetensors"
    save_file(sd3_original_state_dict(_sd3_transformer(tiny_sd3)), str(sd3_file))
    save_file({"some.weight": torch.zeros(2)}, str(other))
    cases = {
        (str(sd3_file),): "pass --config",
        (str(other), "--config", str(tiny_flux["dev"])): "neither the FLUX.1 nor the SD3 layout",
        (str(sd3_file), "--config", str(tiny_flux["dev"])): "but --config",
    }
    for arguments, message in cases.items():
        result = CliRunner().invoke(main, ["export", *arguments, "--out", str(tmp_path / "out")])
        assert result.exit_code != 0 and message in result.output, result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) <= 2, result.output


@pytest.mark.slow  # exports the tiny SD3 again to compare its images with the folder export's
def test_sd3_export_from_a_single_file_equals_export_from_the_folder(tiny_sd3, exported_sd3, tmp_path):
    checkpoint = tmp_path / "sd3.safetensors"
    save_file(sd3_original_state_dict(_sd3_transformer(tiny_sd3), FULL_CHECKPOINT_PREFIX), str(checkpoint))
    out = tmp_path / "from-file"
    result = CliRunner().invoke(main, ["export", str(checkpoint), "--config", str(tiny_sd3), "--out", str(out)])
    assert result.exit_code == 0, result.output
    settings = dict(prompt="a photo of a cat", steps=3, seed=2, guidance_scale=4.0)
    expected = Pipeline.load(exported_sd3("t5")).generate(**settings).array
    np.testing.assert_array_equal(Pipeline.load(out).generate(**settings).array, expected)


@pytest.mark.slow  # exports the tiny FLUX.1 dev again to compare its images with the folder export's
def test_flux_export_from_a_single_file_equals_export_from_the_folder(
    tiny_flux, tiny_flux_split, exported_flux, tmp_path
):
    from diffusers import FluxTransformer2DModel

    transformer = FluxTransformer2DModel.from_pretrained(tiny_flux["dev"], subfolder="transformer")
    checkpoint = tmp_path / "flux.safetensors"
    save_file(flux_original_state_dict(transformer), str(checkpoint))
    out = tmp_path / "from-file"
    result = CliRunner().invoke(main, ["export", str(checkpoint), "--config", str(tiny_flux["dev"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    settings = dict(prompt="a photo of a cat", steps=3, seed=2, guidance_scale=3.5)
    expected = Pipeline.load(exported_flux("dev")).generate(**settings).array
    np.testing.assert_array_equal(Pipeline.load(out).generate(**settings).array, expected)
