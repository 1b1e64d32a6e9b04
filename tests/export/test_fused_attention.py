"""--fused-attention (CPU): the tiny UNet's attention exported as ONNX Runtime's
MultiHeadAttention, and the image still equal to diffusers' within test_pipeline's tolerances."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from diffusers import LMSDiscreteScheduler

from conftest import diffusers_pipeline
from sdrt.export.exporter import export_model
from sdrt.export.options import ExportOptions
from sdrt.export.staging import ExportError
from sdrt.runtime.pipeline import Pipeline

MAX_PIXEL_ERROR = 2 / 255
MEAN_PIXEL_ERROR = 0.5 / 255
FUSED_OP = "MultiHeadAttention"
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
def test_unet_attention_is_one_operator(fused_export):
    graph = onnx.load_model(str(fused_export / "unet" / "model.onnx"), load_external_data=False).graph
    ops = [node.op_type for node in graph.node]
    # the tiny UNet has two transformer blocks, each with self- and cross-attention
    assert ops.count(FUSED_OP) == 4
    assert "Softmax" not in ops


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


def test_fused_attention_is_for_the_cpu():
    with pytest.raises(ExportError, match="fused_attention"):
        ExportOptions(target="cuda", fused_attention=True)
