"""A Qwen3 language model as a text encoder: the prompts wrapped and tokenized by
sdrt.runtime.text.qwen_tokenizer, the exported encoder (sdrt.export.qwen_encoder) run on the ids
and the attention mask, and the hidden states of the layers the export chose returned with the
mask, so a family keeps the positions the mask marks (ZImagePipeline._encode_prompt keeps
`hidden_states[-2][mask]`; FLUX.2 klein stacks several layers).

The engine's outputs are named `hidden_states_{index}` (index into transformers'
`output_hidden_states` tuple: 0 is the embeddings, i the output of layer i); the manifest's
component spec lists them, in the order the export was asked for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from sdrt.errors import ModelFolderError
from sdrt.runtime.engines import Engine
from sdrt.runtime.loop.timings import TOKENIZE, Timings
from sdrt.runtime.text.qwen_tokenizer import QwenTokenizer, QwenTokens

#: The encoder's inputs: token ids and the tokenizer's attention mask (1 real, 0 padding).
QWEN_IDS, QWEN_MASK = "input_ids", "attention_mask"
#: The token axis of the encoder's tensors (dynamic: a batch is padded to its longest prompt).
QWEN_SEQUENCE = "qwen_sequence"
HIDDEN_PREFIX = "hidden_states_"


def layer_output(index: int) -> str:
    """The engine output holding transformers' hidden_states[index] (index >= 0)."""
    return f"{HIDDEN_PREFIX}{index}"


def layer_outputs(engine: Engine) -> list[str]:
    """The engine's hidden-state outputs in the export's order."""
    names = [name for name in engine.output_names if name.startswith(HIDDEN_PREFIX)]
    if not names:
        raise ModelFolderError(f"{engine.name} has no {HIDDEN_PREFIX}* outputs; it is not a Qwen encoder export")
    return names


@dataclass(frozen=True)
class QwenEncoding:
    """float32 hidden states [batch, longest row, width] per exported layer (the export's order),
    the tokens that made them (mask, lengths, what truncation dropped)."""

    hidden: list[np.ndarray]
    tokens: QwenTokens

    def rows(self, layer: int = 0) -> list[np.ndarray]:
        """Each prompt's hidden states at its real positions: [length, width] (the pipeline's
        `prompt_embeds[i][prompt_masks[i]]`)."""
        states = self.hidden[layer]
        return [states[row][self.tokens.attention_mask[row]] for row in range(len(states))]


class QwenTextEncoder:
    """The tokenizer and the encoder engine; `encode` returns QwenEncoding."""

    def __init__(self, tokenizer: QwenTokenizer, engine: Engine, max_rows: int | None = None):
        self.tokenizer = tokenizer
        self.engine = engine
        self.outputs = layer_outputs(engine)
        self.max_rows = max_rows  # the export's batch limit (None: all rows at once)

    def encode(self, prompts: list[str], timings: Timings | None = None) -> QwenEncoding:
        started = time.perf_counter()
        tokens = self.tokenizer.encode(prompts)
        if timings is not None:
            timings.add(TOKENIZE, time.perf_counter() - started)
        ids = tokens.input_ids.astype(self.engine.input_dtype(QWEN_IDS))
        mask = tokens.attention_mask.astype(self.engine.input_dtype(QWEN_MASK))
        step = self.max_rows or len(prompts)
        parts = [
            self.engine.run({QWEN_IDS: ids[i : i + step], QWEN_MASK: mask[i : i + step]})
            for i in range(0, len(prompts), step)
        ]
        hidden = [np.concatenate([part[name] for part in parts]).astype(np.float32) for name in self.outputs]
        return QwenEncoding(hidden, tokens)
