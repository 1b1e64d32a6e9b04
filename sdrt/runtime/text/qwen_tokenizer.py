"""Qwen3's tokenizer (byte-level BPE) through the `tokenizers` library, from the model's
`tokenizer.json`, with the prompt wrapped as diffusers' ZImagePipeline wraps it.

ZImagePipeline._encode_prompt renders each prompt through the tokenizer's chat template as one
user message (add_generation_prompt=True, enable_thinking=True), then tokenizes the text with
padding="max_length", truncation=True. For a single user message and no tools, Qwen3's template
renders `<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n` (enable_thinking=True adds
no empty think block), so the wrapping is reproduced here as text, without jinja. Special tokens
typed in a prompt stay special tokens (the template's text is tokenized as a whole, as
transformers does); truncation cuts the end of the wrapped text.

The pipeline keeps the hidden states of the positions its attention mask marks, so the ids here
are the unpadded ones: `encode` returns the token count of each row and pads only to the
batch's longest row (the mask says which positions are real).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdrt.errors import ModelFolderError
from sdrt.runtime.files.json_files import read_json
from sdrt.runtime.text.checks import check_text

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
#: Qwen's chat markers (the template's message boundaries).
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
USER_ROLE, ASSISTANT_ROLE = "user", "assistant"
#: Qwen's pad token when tokenizer_config.json names none.
DEFAULT_PAD = "<|endoftext|>"
#: ZImagePipeline's max_sequence_length.
DEFAULT_MAX_LENGTH = 512
#: A tokenizer.json larger than this is not Qwen's (Qwen3's 151k-token file is about 11 MB).
MAX_TOKENIZER_BYTES = 64 * 2**20


def chat_prompt(prompt: str) -> str:
    """The text Qwen3's chat template renders for one user message, with the generation prompt
    and thinking enabled (ZImagePipeline's apply_chat_template call)."""
    return f"{IM_START}{USER_ROLE}\n{prompt}{IM_END}\n{IM_START}{ASSISTANT_ROLE}\n"


@dataclass(frozen=True)
class QwenTokens:
    """int64 input_ids and bool attention_mask [batch, longest row]; `lengths` per row;
    `dropped_text`: what truncation cut from each row's wrapped prompt ('' when nothing)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    lengths: list[int]
    dropped_text: list[str]


class QwenTokenizer:
    """`encode` turns prompts into the Qwen3 encoder's inputs; safe to share between threads."""

    def __init__(self, tokenizer, *, pad_token: str, max_length: int = DEFAULT_MAX_LENGTH):
        if max_length < 1:
            raise ModelFolderError(f"Qwen tokenizer max_length must be at least 1, got {max_length}")
        self._tokenizer = tokenizer
        self.max_length = max_length
        for token in (IM_START, IM_END, pad_token):
            if tokenizer.token_to_id(token) is None:
                raise ModelFolderError(f"the Qwen tokenizer has no {token!r} token; it is not a Qwen chat tokenizer")
        self.pad_id = int(tokenizer.token_to_id(pad_token))

    @classmethod
    def from_folder(cls, folder: str | Path, max_length: int = DEFAULT_MAX_LENGTH) -> QwenTokenizer:
        """From a folder with tokenizer.json (and optionally tokenizer_config.json naming the pad
        token)."""
        from tokenizers import Tokenizer

        folder = Path(folder)
        path = folder / TOKENIZER_JSON
        if not path.is_file():
            raise ModelFolderError(f"{folder} has no {TOKENIZER_JSON}; re-export the model")
        if path.stat().st_size > MAX_TOKENIZER_BYTES:
            raise ModelFolderError(f"{path} is larger than any Qwen tokenizer ({MAX_TOKENIZER_BYTES} bytes)")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as error:  # the Rust library's parse errors have no common Python type
            raise ModelFolderError(f"{path} is not a tokenizer file: {str(error)[:200]}") from None
        config = read_json(folder / TOKENIZER_CONFIG) if (folder / TOKENIZER_CONFIG).is_file() else {}
        return cls(tokenizer, pad_token=_token(config.get("pad_token"), DEFAULT_PAD), max_length=max_length)

    def tokenize(self, prompt: str) -> list[int]:
        """The wrapped prompt's ids: no truncation, no padding."""
        check_text(prompt, "prompt")
        return list(self._tokenizer.encode(chat_prompt(prompt), add_special_tokens=False).ids)

    def encode(self, prompts: str | Sequence[str]) -> QwenTokens:
        if isinstance(prompts, str):
            prompts = [prompts]
        rows = [self.tokenize(prompt) for prompt in prompts]
        kept = [row[: self.max_length] for row in rows]
        width = max(len(row) for row in kept)
        input_ids = np.full((len(kept), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(kept), width), dtype=bool)
        for index, row in enumerate(kept):
            input_ids[index, : len(row)] = row
            mask[index, : len(row)] = True
        dropped = [self.decode(row[self.max_length :]) for row in rows]
        return QwenTokens(input_ids, mask, [len(row) for row in kept], dropped)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=False) if len(ids) else ""


def _token(value, default: str) -> str:
    """A special token as tokenizer_config.json writes it: a string, or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else default
