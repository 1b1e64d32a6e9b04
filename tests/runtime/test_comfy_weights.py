"""ComfyUI's prompt weights (the "ComfyUI" emphasis mode): its parse and its rule for the hidden
states, against comfy/sd1_clip.py's algorithm written in tests/support/comfy_reference.py and
run on the tiny model's transformers CLIP."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import diffusers_pipeline
from sdrt.runtime.pipeline import Pipeline
from sdrt.runtime.text.prompts.comfy_weights import parse_comfy_weights
from sdrt.runtime.text.prompts.emphasis import emphasis_mode
from sdrt.runtime.text.prompts.options import TextOptions
from support.comfy_reference import comfy_encode, token_weights

#: Float32 encoder arithmetic, ONNX Runtime against torch.
HIDDEN_TOLERANCE = 1e-4


@pytest.mark.parametrize(
    "text",
    ["a (red:1.5) fox", "((a:1.2)) b", "(b) ((c))", "[x] \\(y\\) z", "(a:b) c", "(unclosed", "x) y", "(a (b:0.5))"],
)
def test_parse_equals_comfyuis(text):
    escaped = text.replace("\\)", "\0\1").replace("\\(", "\0\2")
    expected = [(t.replace("\0\1", ")").replace("\0\2", "("), w) for t, w in token_weights(escaped, 1.0)]
    got = parse_comfy_weights(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected], rel=1e-12)


def test_explicit_weights_set_not_multiply():
    assert parse_comfy_weights("((a:1.2))") == [("a", 1.2)]
    assert parse_comfy_weights("[a]") == [("[a]", 1.0)]


@pytest.fixture(scope="module")
def tiny(tiny_models, exported_tiny):
    return diffusers_pipeline("StableDiffusionPipeline", tiny_models["standard"]), Pipeline.load(exported_tiny())


@pytest.mark.parametrize("text", ["a photo of a (red:1.5) fox, (snow:0.7)", "((cat)) on a mat", "plain words"])
def test_hidden_states_equal_comfyuis(tiny, text):
    reference, ours = tiny
    expected = comfy_encode(reference, text)[0].numpy()
    options = TextOptions(emphasis_mode("ComfyUI"))
    (encoding,) = ours.text_encoders.encode([text], ours.engines, options)
    np.testing.assert_allclose(encoding.hidden, expected, atol=HIDDEN_TOLERANCE, rtol=0)
    a1111 = ours.text_encoders.encode([text], ours.engines, TextOptions())[0].hidden
    if "(" in text:  # A1111's rule (with mean restoration) is another encoding
        assert np.abs(a1111 - expected).max() > 10 * HIDDEN_TOLERANCE
