"""Qwen3's tokenizer with the prompt wrapped as diffusers' Flux2KleinPipeline wraps it.

Flux2KleinPipeline._get_qwen3_prompt_embeds renders one user message through the chat template
with add_generation_prompt=True and enable_thinking=False, which Qwen3's template ends with an
empty think block (`<think>\\n\\n</think>\\n\\n` after the assistant marker; Z-Image enables
thinking and has none), then tokenizes with padding="max_length", truncation=True: every row is
max_length ids, and the transformer reads all of them, padding included (unlike Z-Image, which
keeps the masked positions only).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sdrt.runtime.text.checks import check_text
from sdrt.runtime.text.qwen_tokenizer import QwenTokenizer, QwenTokens, chat_prompt

#: What Qwen3's chat template appends to the generation prompt when enable_thinking is false.
EMPTY_THINK_BLOCK = "<think>\n\n</think>\n\n"


def klein_prompt(prompt: str) -> str:
    """The text Flux2KleinPipeline's apply_chat_template call renders for one prompt."""
    return chat_prompt(prompt) + EMPTY_THINK_BLOCK


class KleinTokenizer(QwenTokenizer):
    """`encode` gives [batch, max_length] ids and mask, padded with the pad token (right)."""

    def tokenize(self, prompt: str) -> list[int]:
        check_text(prompt, "prompt")
        return list(self._tokenizer.encode(klein_prompt(prompt), add_special_tokens=False).ids)

    def encode(self, prompts: str | Sequence[str]) -> QwenTokens:
        tokens = super().encode(prompts)
        rows, width = tokens.input_ids.shape
        input_ids = np.full((rows, self.max_length), self.pad_id, dtype=np.int64)
        mask = np.zeros((rows, self.max_length), dtype=bool)
        input_ids[:, :width], mask[:, :width] = tokens.input_ids, tokens.attention_mask
        return QwenTokens(input_ids, mask, tokens.lengths, tokens.dropped_text)
