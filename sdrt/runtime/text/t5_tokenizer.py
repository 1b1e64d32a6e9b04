"""T5's tokenizer (a SentencePiece unigram model) through the `tokenizers` library, from the
`tokenizer.json` an export writes (sdrt.export.flux writes one from `spiece.model` when a model
has only that).

Ids are what FluxPipeline feeds T5: the prompt's pieces, cut to `max_length - 1`, the eos token,
then the pad token up to `max_length` (transformers' `T5TokenizerFast` with padding="max_length",
truncation=True). Special tokens typed in the prompt (`</s>`, `<extra_id_0>`) are cut out first,
as transformers does. What truncation removed is reported, so callers can warn as diffusers does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sdrt.errors import ModelFolderError
from sdrt.runtime.files.json_files import read_json
from sdrt.runtime.text.checks import check_text
from sdrt.runtime.text.tokenizer import TokenizedPrompts

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
#: T5's special tokens, as its tokenizer_config.json names them (the defaults when it does not).
DEFAULT_EOS, DEFAULT_PAD = "</s>", "<pad>"
#: The eos token the sequence ends with.
SPECIAL_TOKENS_AT_END = 1
#: A tokenizer.json larger than this is not T5's (its 32k-piece file is about 2.4 MB).
MAX_TOKENIZER_BYTES = 64 * 2**20


class T5Tokenizer:
    """`encode` turns prompts into T5's `input_ids`; safe to share between threads (the Rust
    tokenizer is immutable once loaded)."""

    def __init__(self, tokenizer, *, eos_token: str, pad_token: str, max_length: int):
        if max_length < SPECIAL_TOKENS_AT_END + 1:
            raise ModelFolderError(f"T5 tokenizer max_length must be at least 2, got {max_length}")
        self._tokenizer = tokenizer
        self.max_length = max_length
        ids = {}
        for name, token in (("eos", eos_token), ("pad", pad_token)):
            index = tokenizer.token_to_id(token)
            if index is None:
                raise ModelFolderError(f"the T5 tokenizer has no {name} token {token!r}")
            ids[name] = index
        self.eos_id, self.pad_id = ids["eos"], ids["pad"]
        self.eos_token, self.pad_token = eos_token, pad_token

    @classmethod
    def from_folder(cls, folder: str | Path, max_length: int) -> T5Tokenizer:
        """From a folder with tokenizer.json (and optionally tokenizer_config.json naming the
        eos and pad tokens)."""
        from tokenizers import Tokenizer

        folder = Path(folder)
        path = folder / TOKENIZER_JSON
        if not path.is_file():
            raise ModelFolderError(f"{folder} has no {TOKENIZER_JSON}; re-export the model")
        if path.stat().st_size > MAX_TOKENIZER_BYTES:
            raise ModelFolderError(f"{path} is larger than any T5 tokenizer ({MAX_TOKENIZER_BYTES} bytes)")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as error:  # the Rust library's parse errors have no common Python type
            raise ModelFolderError(f"{path} is not a tokenizer file: {str(error)[:200]}") from None
        config = read_json(folder / TOKENIZER_CONFIG) if (folder / TOKENIZER_CONFIG).is_file() else {}
        return cls(
            tokenizer,
            eos_token=_token(config.get("eos_token"), DEFAULT_EOS),
            pad_token=_token(config.get("pad_token"), DEFAULT_PAD),
            max_length=max_length,
        )

    def tokenize(self, text: str) -> list[int]:
        """The prompt's piece ids: no eos, no truncation, no padding."""
        check_text(text, "prompt")
        return list(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def encode(self, prompts: str | Sequence[str], max_length: int | None = None) -> TokenizedPrompts:
        """int64 [batch, max_length]: pieces (cut to max_length - 1), eos, pads (`max_length`:
        another length than the tokenizer's, SD3's per-request max_sequence_length)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        length = self.max_length if max_length is None else max_length
        capacity = length - SPECIAL_TOKENS_AT_END
        input_ids = np.full((len(prompts), length), self.pad_id, dtype=np.int64)
        lengths, dropped = [], []
        for row, prompt in enumerate(prompts):
            content = self.tokenize(prompt)
            sequence = [*content[:capacity], self.eos_id]
            input_ids[row, : len(sequence)] = sequence
            lengths.append(len(sequence))
            dropped.append(self.decode(content[capacity:]))
        return TokenizedPrompts(input_ids=input_ids, lengths=lengths, dropped_text=dropped)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=False) if len(ids) else ""


def _token(value, default: str) -> str:
    """A special token as tokenizer_config.json writes it: a string, or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else default
