"""--fused-attention (CPU, the default there): the UNet's attention exported as ONNX Runtime's
MultiHeadAttention, one transformer block's output equal to diffusers' module, and
the tiny model's image equal to diffusers' within test_pipeline's tolerances (slow tier)."""

from __future__ import annotations

import json
import warnings
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from diffusers import LMSDiscreteScheduler
from diffusers.models.attention_processor import Attention, AttnProcessor
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from onnx import numpy_helper

from conftest import diffusers_pipeline
from sdrt.cli import main
from sdrt.export import exporter, onnx_graph, options
from sdrt.export.exporter import export_model
from sdrt.export.options import ExportOptions
from sdrt.export.staging import ExportError
from sdrt.export.validation import RELATIVE_TOLERANCE
from sdrt.runtime.manifest import Manifest
from sdrt.runtime.pipeline import Pipeline

MAX_PIXEL_ERROR = 2 / 255
MEAN_PIXEL_ERROR = 0.5 / 255
FUSED_OP = "MultiHeadAttention"
# One of the UNet's transformer blocks, small (SD 1.5's has 8 heads of 40 and a context of 768).
BLOCK = {"num_attention_heads": 2, "attention_head_dim": 16, "in_channels": 32, "norm_num_groups": 8}
CONTEXT_WIDTH, CONTEXT_LENGTH, SIDE = 24, 7, 8
SEED, STEPS, PROMPT = 1234, 2, ["a photo of a cat", "an astronaut riding a horse"]


@pytest.fixture(scope="module")
def fused_export(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("fused") / "export"
    export_model(
        str(tiny_models["standard"]), out, options=ExportOptions(fused_attention=True), progress=lambda _: None
    )
    return out


# The fused export (onnxruntime.transformers' optimizer) costs over a minute of CPU: slow tier.
@pytest.mark.slow
def test_unet_attention_is_one_operator(fused_export, tiny_models):
    from diffusers import UNet2DConditionModel

    graph = onnx.load_model(str(fused_export / "unet" / "model.onnx"), load_external_data=False).graph
    ops = [node.op_type for node in graph.node]
    unet = UNet2DConditionModel.from_pretrained(tiny_models["standard"] / "unet")
    # each self- and cross-attention of the UNet's transformer blocks, and nothing else
    assert ops.count(FUSED_OP) == sum(isinstance(module, Attention) for module in unet.modules())
    assert "Softmax" not in ops and "Attention" not in ops
    spec = Manifest.load(fused_export).components
    assert spec["unet"].fused_attention and not spec["text_encoder"].fused_attention
    # every layer keeps a weight of its own, so a LoRA reaches every attention projection
    assert json.loads((fused_export / spec["unet"].weights_map).read_text())["unmapped"] == []


@pytest.mark.slow
def test_fused_image_equals_diffusers(fused_export, tiny_models):
    reference = diffusers_pipeline("StableDiffusionPipeline", tiny_models["standard"])
    reference.scheduler = LMSDiscreteScheduler.from_config(reference.scheduler.config)
    result = Pipeline.load(fused_export).generate(PROMPT, steps=STEPS, seed=SEED)
    expected = reference(
        PROMPT, num_inference_steps=STEPS, generator=torch.Generator("cpu").manual_seed(SEED), output_type="np"
    ).images
    difference = np.abs(result.array - expected)
    assert difference.max() <= MAX_PIXEL_ERROR and difference.mean() <= MEAN_PIXEL_ERROR
    assert expected.std() > 0.01


def test_fused_attention_is_for_the_cpu_in_fp32():
    with pytest.raises(ExportError, match="fused_attention"):
        ExportOptions(target="cuda", fused_attention=True)
    with pytest.raises(ExportError, match="fused_attention needs --precision fp32"):
        ExportOptions(precision="fp16", fused_attention=True)


def test_a_fused_transformer_block_equals_diffusers(tmp_path):
    """The UNet's attention block traced as the exporter traces it (classic attention), fused,
    run by ONNX Runtime: both attentions become one MultiHeadAttention each, the self-attention's
    Q, K and V weights stay apart, and the output is diffusers' module's within the export's own
    fp32 tolerance (sdrt.export.validation)."""
    torch.manual_seed(0)
    block = Transformer2DModel(**BLOCK, cross_attention_dim=CONTEXT_WIDTH).eval()
    for module in block.modules():
        if isinstance(module, Attention):
            module.set_processor(AttnProcessor())
    sample = torch.randn(2, BLOCK["in_channels"], SIDE, SIDE)
    context = torch.randn(2, CONTEXT_LENGTH, CONTEXT_WIDTH)

    class Traced(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.block = block

        def forward(self, sample, context):
            return self.block(sample, encoder_hidden_states=context, return_dict=False)[0]

    plain, fused = tmp_path / "plain.onnx", tmp_path / "fused.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = Traced()(sample, context).numpy()
        torch.onnx.export(Traced(), (sample, context), str(plain), dynamo=False, input_names=["sample", "context"])
    # weights in an external file, as a full-size UNet's are (the fusion reads them from there)
    onnx.save_model(onnx.load_model(str(plain)), str(plain), save_as_external_data=True, size_threshold=0)
    onnx_graph.fuse_attention_for_cpu(plain, fused)
    graph = onnx.load_model(str(fused)).graph
    ops = [node.op_type for node in graph.node]
    assert ops.count(FUSED_OP) == 2 and "Softmax" not in ops and "Attention" not in ops
    # each projection's weight is one initializer of its own, as LoRA's weights map needs
    held = {numpy_helper.to_array(tensor).tobytes() for tensor in graph.initializer}
    attention = block.transformer_blocks[0].attn1
    for layer in attention.to_q, attention.to_k, attention.to_v:
        assert layer.weight.detach().numpy().T.copy().tobytes() in held
    session = ort.InferenceSession(str(fused), providers=["CPUExecutionProvider"])
    result = session.run(None, {"sample": sample.numpy(), "context": context.numpy()})[0]
    assert np.abs(result - expected).max() <= RELATIVE_TOLERANCE["fp32"] * np.abs(expected).max()


def test_fused_attention_defaults_to_the_target(monkeypatch, tmp_path):
    """None (not told) takes the target's default; --no-fused-attention turns it off. The suite's
    conftest turns the default off for speed: here the shipped table is put back."""
    monkeypatch.setattr(options, "FUSED_ATTENTION_BY_TARGET", {"cpu": True, "cuda": False})
    assert ExportOptions().fused_attention is True
    assert ExportOptions(target="cuda").fused_attention is False
    assert ExportOptions(precision="fp16").fused_attention is False
    assert ExportOptions(weights="int8").fused_attention is False
    assert ExportOptions(qdq="int8").fused_attention is False  # Q/DQ quantizes the plain graph
    assert ExportOptions(fused_attention=False).fuses_attention("unet") is False
    made: list[ExportOptions] = []

    def export(*arguments, options, **keywords):
        made.append(options)
        return SimpleNamespace(components={})

    monkeypatch.setattr(exporter, "export_model", export)
    for flag, fused in ((), True), (("--no-fused-attention",), False), (("--fused-attention",), True):
        result = CliRunner().invoke(main, ["export", "some/model", "--out", str(tmp_path / "out"), *flag])
        assert result.exit_code == 0, result.output
        assert made[-1].fused_attention is fused
