"""sdrt.export.dit_cpu_fusions on the tiny SD3.5-Medium-shaped transformer: every RMSNorm and tanh
GELU of diffusers' model becomes one fused operator, and the fused graph still equals diffusers'
SD3Transformer2DModel (and with `sdrt export --fused-attention`, the whole pipeline)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from sdrt.export.dit_cpu_fusions import GELU_OP, RMS_NORM_OP, fuse_file
from sdrt.runtime.manifest import Manifest
from sdrt.runtime.sd3_spec import SKIP_LAYERS

#: The ONNX transformer against its PyTorch module: float32 arithmetic in another order (as in
#: test_sd3_export); FastGelu's tanh and the fused norm's float32 sums are within it.
TOLERANCE = 1e-4
#: The operators the fused patterns are made of: none may be left (Sqrt stays: the attention
#: scale's sqrt of the head size).
FUSED_AWAY = ("Tanh", "Pow", "ReduceMean")
PROMPT, SIZE = "a red fox in a snowy forest at dawn", {"height": 64, "width": 48}


@pytest.fixture(scope="module")
def fused_transformer(exported_sd3, tmp_path_factory):
    """The tiny no-T5 export's transformer graph with the fusions (beside a copy of its weights)."""
    source = exported_sd3("no-t5") / "transformer"
    folder = tmp_path_factory.mktemp("fused-sd3")
    shutil.copy(source / "model.onnx.data", folder / "model.onnx.data")
    counts = fuse_file(source / "model.onnx", folder / "model.onnx")
    return folder / "model.onnx", counts


def test_every_rms_norm_and_tanh_gelu_is_fused(tiny_sd3, fused_transformer):
    import onnx
    from diffusers import SD3Transformer2DModel
    from diffusers.models.activations import GELU
    from diffusers.models.normalization import RMSNorm

    path, counts = fused_transformer
    model = SD3Transformer2DModel.from_pretrained(tiny_sd3 / "transformer")
    modules = list(model.modules())
    norms = sum(isinstance(m, RMSNorm) and m.weight is not None for m in modules)
    gelus = sum(isinstance(m, GELU) and m.approximate == "tanh" for m in modules)
    assert norms > 0 and gelus > 0  # the tiny model has both (qk_norm "rms_norm", gelu-approximate MLPs)
    assert counts == {RMS_NORM_OP: norms, GELU_OP: gelus}
    ops = [node.op_type for node in onnx.load_model(str(path), load_external_data=False).graph.node]
    assert ops.count(RMS_NORM_OP) == norms and ops.count(GELU_OP) == gelus
    assert not [op for op in ops if op in FUSED_AWAY]


@pytest.mark.parametrize("skipped", [[], [1]])
def test_the_fused_transformer_equals_diffusers(tiny_sd3, fused_transformer, skipped):
    import onnxruntime
    from diffusers import SD3Transformer2DModel

    path, _ = fused_transformer
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model = SD3Transformer2DModel.from_pretrained(tiny_sd3 / "transformer").eval()
    config = model.config
    generator = torch.Generator().manual_seed(7)
    sample = torch.randn(2, config.in_channels, 8, 6, generator=generator)
    timestep = torch.tensor([500.0, 250.0])
    text = torch.randn(2, 90, config.joint_attention_dim, generator=generator)
    pooled = torch.randn(2, config.pooled_projection_dim, generator=generator)
    mask = np.zeros(config.num_layers, np.float32)
    mask[skipped] = 1
    feeds = {
        "hidden_states": sample.numpy(),
        "timestep": timestep.numpy(),
        "encoder_hidden_states": text.numpy(),
        "pooled_projections": pooled.numpy(),
        SKIP_LAYERS: mask,
    }
    got = session.run(["out_sample"], feeds)[0]
    with torch.no_grad():
        expected = model(sample, text, pooled, timestep, skip_layers=skipped or None, return_dict=False)[0].numpy()
    np.testing.assert_allclose(got, expected, atol=TOLERANCE, rtol=TOLERANCE)


@pytest.mark.slow
def test_sdrt_export_fused_attention_fuses_sd3_and_the_image_equals_diffusers(tiny_sd3, tmp_path):
    """`--fused-attention` on SD3: the exported transformer has the fused operators, passes the
    export's validation and gives diffusers' image (issue 32's 2/255 max, 0.5/255 mean)."""
    import onnx

    from sdrt.export.exporter import ExportOptions, export_model
    from sdrt.runtime.pipeline import Pipeline
    from tests.conftest import sd3_reference
    from tests.support.images import assert_same_image

    folder = tmp_path / "fused"
    export_model(str(tiny_sd3), folder, options=ExportOptions(no_t5=True, fused_attention=True), progress=print)
    manifest = Manifest.load(folder)
    graph = onnx.load_model(str(folder / manifest.components["transformer"].file), load_external_data=False).graph
    assert {RMS_NORM_OP, GELU_OP} <= {node.op_type for node in graph.node}
    got = Pipeline.load(folder).generate(PROMPT, steps=2, seed=3, guidance_scale=5.0, **SIZE)
    expected = sd3_reference("StableDiffusion3Pipeline", tiny_sd3, t5=False)(
        PROMPT,
        num_inference_steps=2,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(3),
        output_type="np",
        **SIZE,
    ).images
    assert_same_image(got.array, expected)
