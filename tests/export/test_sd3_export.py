"""SD3's export (sdrt.export.sd3): the engines a tiny random SD3.5-Medium-shaped pipeline
gives, with and without T5, and the transformer's skip mask against diffusers' skip_layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdrt.runtime.manifest import Manifest
from sdrt.runtime.sd3_spec import SKIP_LAYERS

#: The ONNX transformer against its PyTorch module: float32 arithmetic in another order.
TOLERANCE = 1e-4


@pytest.mark.parametrize("kind", ["t5", "no-t5"])
def test_an_sd3_export_has_its_engines_and_manifest(exported_sd3, kind):
    manifest = Manifest.load(exported_sd3(kind))
    assert manifest.family == "sd3" and manifest.sd3 is not None
    expected = {"text_encoder", "text_encoder_2", "transformer", "vae_decoder", "vae_encoder"}
    assert set(manifest.components) == expected | ({"text_encoder_3"} if kind == "t5" else set())
    assert (manifest.sd3.t5_encoder is None) == (kind == "no-t5")
    assert manifest.vae_shift_factor != 0 and manifest.vae_scaling_factor != 1  # read from the VAE's config
    mask = next(spec for spec in manifest.components["transformer"].inputs if spec.name == SKIP_LAYERS)
    assert mask.shape == [manifest.sd3.transformer_layers]


@pytest.mark.parametrize("skipped", [[], [1], [0, 2]])
def test_the_transformers_skip_mask_equals_diffusers_skip_layers(tiny_sd3, exported_sd3, skipped):
    """One set of weights: the mask input skips layers as diffusers' skip_layers argument does."""
    import onnxruntime
    from diffusers import SD3Transformer2DModel

    folder = exported_sd3("t5")
    manifest = Manifest.load(folder)
    session = onnxruntime.InferenceSession(str(folder / manifest.components["transformer"].file))
    model = SD3Transformer2DModel.from_pretrained(tiny_sd3 / "transformer").eval()
    generator = torch.Generator().manual_seed(len(skipped))
    config = model.config
    sample = torch.randn(2, config.in_channels, 8, 6, generator=generator)
    timestep = torch.tensor([500.0, 250.0])
    text = torch.randn(2, 90, config.joint_attention_dim, generator=generator)
    pooled = torch.randn(2, config.pooled_projection_dim, generator=generator)
    mask = np.zeros(manifest.sd3.transformer_layers, np.float32)
    mask[skipped] = 1
    got = session.run(
        ["out_sample"],
        {
            "hidden_states": sample.numpy(),
            "timestep": timestep.numpy(),
            "encoder_hidden_states": text.numpy(),
            "pooled_projections": pooled.numpy(),
            SKIP_LAYERS: mask,
        },
    )[0]
    with torch.no_grad():
        expected = model(sample, text, pooled, timestep, skip_layers=skipped or None, return_dict=False)[0].numpy()
    np.testing.assert_allclose(got, expected, atol=TOLERANCE, rtol=TOLERANCE)
    if skipped:
        with torch.no_grad():
            unskipped = model(sample, text, pooled, timestep, return_dict=False)[0].numpy()
        assert np.abs(unskipped - expected).max() > TOLERANCE * 100  # skipping changed the prediction


@pytest.mark.slow
def test_sdrt_export_no_t5_leaves_t5_out_and_other_families_refuse_it(tiny_sd3, tiny_models, tmp_path):
    from click.testing import CliRunner

    from sdrt.cli import main

    out = tmp_path / "no-t5"
    result = CliRunner().invoke(main, ["export", str(tiny_sd3), "--out", str(out), "--no-t5"])
    assert result.exit_code == 0, result.output
    manifest = Manifest.load(out)
    assert "text_encoder_3" not in manifest.components and manifest.sd3.t5_encoder is None
    assert not (out / "tokenizer_3").exists()
    refused = CliRunner().invoke(
        main, ["export", str(tiny_models["standard"]), "--out", str(tmp_path / "sd"), "--no-t5"]
    )
    assert refused.exit_code != 0 and "--no-t5 is for Stable Diffusion 3 models" in refused.output
    assert "Traceback" not in refused.output
