"""Chroma's text: T5's hidden states run with the tokenizer's attention mask, and the mask the
transformer attends with, as ChromaPipeline._get_t5_prompt_embeds computes them: 1 for each real
token (eos included) and for the first padding token, 0 for the rest. The prompt is plain text,
padded or cut to the export's `max_sequence_length` (a cut is a warning, as in FLUX).
"""

from __future__ import annotations

import time

import numpy as np

from sdrt.runtime.engines import Engine
from sdrt.runtime.families.chroma import T5_MASK, MaskedEncoding
from sdrt.runtime.loop.timings import TOKENIZE, Timings
from sdrt.runtime.manifest import LAST_HIDDEN
from sdrt.runtime.text.flux_encoders import OneTokenizerTextEncoders
from sdrt.runtime.text.prompts.options import TextOptions
from sdrt.runtime.text.t5_tokenizer import T5Tokenizer

#: ChromaPipeline keeps the first padding token visible to the transformer.
VISIBLE_PADDING = 1


def token_masks(lengths: list[int], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(the tokenizer's int mask, the transformer's float32 mask) of each row."""
    positions = np.arange(max_length)[None, :]
    counts = np.asarray(lengths)[:, None]
    return (positions < counts).astype(np.int64), (positions < counts + VISIBLE_PADDING).astype(np.float32)


class ChromaTextEncoders(OneTokenizerTextEncoders):
    """The T5 encoder of a Chroma export (the interface the loop reads from TextEncoders)."""

    label = "Chroma"
    tokenizer_class = T5Tokenizer
    t5_slot = True

    def encode(
        self,
        texts: list[str],
        engines: dict[str, Engine],
        options: TextOptions,
        timings: Timings | None = None,
        used: dict | None = None,
        negatives: frozenset[str] = frozenset(),
        warnings: list[str] | None = None,
    ) -> list[MaskedEncoding]:
        (t5,) = self.tokenizers
        started = time.perf_counter()
        ids = t5.encode(texts)
        if timings is not None:
            timings.add(TOKENIZE, time.perf_counter() - started)
        self._warn_cut("T5", ids, t5.max_length, texts, negatives, warnings)
        tokens, visible = token_masks(ids.lengths, t5.max_length)
        engine = engines[self.names[0]]
        step = self.max_rows or len(texts)
        parts = [
            engine.run(
                {
                    "input_ids": ids.input_ids[i : i + step].astype(engine.input_dtype("input_ids")),
                    T5_MASK: tokens[i : i + step].astype(engine.input_dtype(T5_MASK)),
                }
            )[LAST_HIDDEN]
            for i in range(0, len(texts), step)
        ]
        hidden = np.concatenate(parts).astype(np.float32)
        return [MaskedEncoding(hidden[row], None, visible[row]) for row in range(len(texts))]
