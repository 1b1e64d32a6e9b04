"""The Qwen3 text encoder: its ONNX export (sdrt.export.qwen_encoder) through the exporter's own
validation, then the runtime encoder (sdrt.runtime.text.qwen_encoder: sdrt's tokenizer and the
engine) against transformers' Qwen3Model run as ZImagePipeline._encode_prompt runs it
(transformers' tokenizer with the chat template, padding="max_length", output_hidden_states),
at the layers Z-Image reads (-2) and at several intermediate ones (FLUX.2 klein's kind)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sdrt.export.component_build import component_spec, export_component
from sdrt.export.components import ModelGeometry
from sdrt.export.options import ExportOptions
from sdrt.export.qwen_encoder import hidden_indices, qwen_encoder_export
from sdrt.export.random_qwen import build_random_qwen3, save_qwen_tokenizer
from sdrt.runtime.engines.onnxruntime import OrtEngine
from sdrt.runtime.manifest import BATCH, DimRange
from sdrt.runtime.text.qwen_encoder import QWEN_SEQUENCE, QwenTextEncoder
from sdrt.runtime.text.qwen_tokenizer import QwenTokenizer

PROMPTS = ["a red fox in a snowy forest at dawn, highly detailed", "a cat", ""]
#: ZImagePipeline's choice, and a klein-like set of intermediate layers plus the last.
LAYER_SETS = {"zimage": (-2,), "stacked": (1, 2, -1)}
#: Any geometry will do for a text encoder (validation shapes only set the batch).
GEOMETRY = ModelGeometry(16, 16, 8, 32, 8, 2, 8)
#: fp32 ONNX Runtime against PyTorch on a 4-layer, 32-wide model, relative to the largest state
#: (measured ~1e-6; a wrong layer or mask is off by order 1).
RTOL = 1e-4
MAX_LENGTH = 64


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    folder = save_qwen_tokenizer(tmp_path_factory.mktemp("qwen-encoder") / "tokenizer")
    tokenizer = QwenTokenizer.from_folder(folder, max_length=MAX_LENGTH)
    model = build_random_qwen3(vocab_size=tokenizer._tokenizer.get_vocab_size(), seed=0)
    return folder, tokenizer, model


def _engine(model, layers, out: Path) -> OrtEngine:
    component = qwen_encoder_export(model, "text_encoder", layers)
    out.mkdir(parents=True)
    options = ExportOptions()
    final, files, validation = export_component(component, out, GEOMETRY, options, lambda line: None)
    assert validation["passed"] and validation["max_rel_error"] < RTOL
    spec = component_spec(component, out, final, files, validation, options)
    dims = {BATCH: DimRange(1, 1, 8), QWEN_SEQUENCE: DimRange(1, MAX_LENGTH, MAX_LENGTH)}
    return OrtEngine(final, "text_encoder", spec, dims)


def _reference(folder: Path, model, layers):
    """ZImagePipeline._encode_prompt's calls, every requested layer kept."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True, enable_thinking=True
        )
        for p in PROMPTS
    ]
    inputs = tokenizer(texts, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt")
    mask = inputs.attention_mask.bool()
    with torch.no_grad():
        states = model(input_ids=inputs.input_ids, attention_mask=mask, output_hidden_states=True).hidden_states
    return [[states[layer][row][mask[row]].numpy() for row in range(len(PROMPTS))] for layer in layers]


@pytest.mark.parametrize("kind", sorted(LAYER_SETS))
def test_encoder_equals_transformers_hidden_states(qwen, kind, tmp_path):
    folder, tokenizer, model = qwen
    layers = LAYER_SETS[kind]
    engine = _engine(model, layers, tmp_path / "export")
    assert engine.output_names == [f"hidden_states_{i}" for i in hidden_indices(layers, 4)]
    encoding = QwenTextEncoder(tokenizer, engine).encode(PROMPTS)
    expected = _reference(folder, model, layers)
    for layer, want in enumerate(expected):
        got = encoding.rows(layer)
        assert [row.shape for row in got] == [row.shape for row in want]
        for ours, theirs in zip(got, want):
            scale = np.abs(theirs).max()
            assert theirs.std() > 1e-3  # states of a random model, not zeros
            np.testing.assert_allclose(ours, theirs, atol=RTOL * scale, rtol=0)
    if len(layers) > 1:  # the layers differ: the outputs are not one tensor repeated
        assert not np.allclose(encoding.hidden[0], encoding.hidden[1])


def test_layer_choice_is_checked():
    with pytest.raises(ValueError, match="outside"):
        hidden_indices((5,), 4)
    with pytest.raises(ValueError, match="repeat"):
        hidden_indices((-1, 4), 4)
