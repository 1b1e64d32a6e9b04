"""Z-Image's text, as ZImagePipeline._encode_prompt computes it: each prompt wrapped in Qwen3's
chat template and tokenized (sdrt.runtime.text.qwen_tokenizer, cut at the export's
max_sequence_length with a warning), the Qwen3 encoder's hidden_states[-2] run with the
attention mask (sdrt.runtime.text.qwen_encoder), and only the real positions kept: a text's
encoding is [its token count, width], so texts of different lengths run in separate
transformer calls (sdrt.runtime.loop.conditioning groups rows by length).
"""

from __future__ import annotations

from sdrt.runtime.engines import Engine
from sdrt.runtime.loop.timings import Timings
from sdrt.runtime.text.encoders import TextEncoding
from sdrt.runtime.text.flux_encoders import OneTokenizerTextEncoders
from sdrt.runtime.text.prompts.options import TextOptions
from sdrt.runtime.text.qwen_encoder import QwenTextEncoder
from sdrt.runtime.text.qwen_tokenizer import QwenTokenizer


class ZImageTextEncoders(OneTokenizerTextEncoders):
    """The Qwen3 encoder of a Z-Image export (the interface the loop reads from TextEncoders)."""

    label = "Z-Image"
    tokenizer_class = QwenTokenizer

    def encode(
        self,
        texts: list[str],
        engines: dict[str, Engine],
        options: TextOptions,
        timings: Timings | None = None,
        used: dict | None = None,
        negatives: frozenset[str] = frozenset(),
        warnings: list[str] | None = None,
    ) -> list[TextEncoding]:
        (qwen,) = self.tokenizers
        encoding = QwenTextEncoder(qwen, engines[self.names[0]], self.max_rows).encode(texts, timings)
        self._warn_cut("Qwen", encoding.tokens, qwen.max_length, texts, negatives, warnings)
        return [TextEncoding(states, None) for states in encoding.rows()]
