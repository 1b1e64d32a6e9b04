"""CLIP byte-level BPE tokenizer, id-for-id equal to `transformers.CLIPTokenizer` (transformers 5).

The reference pipeline, which this module reproduces step by step:

1. special tokens (bos, eos, pad, unk and any added token) are cut out of the raw text first,
   leftmost-longest, so SD 2.x's pad token "!" splits "!!!" into three pad ids;
2. each remaining segment is normalized: NFC, every whitespace run becomes one space, then each
   character is lowercased on its own (so "Σ" is always "σ", never the final "ς");
3. it is split by the CLIP pattern (contractions, letter runs, single digits, other runs), each
   piece again by the GPT-2 byte-level pattern, and mapped from UTF-8 bytes to printable chars;
4. byte-pair merges are applied to each word, whose last symbol carries the "</w>" suffix.

Unicode tables come from Python's `unicodedata` and the `regex` module. For every code point that
Python's Unicode version assigns, they agree with the reference (tests/runtime/test_tokenizer.py
checks all of them); only characters added to Unicode after that version may tokenize differently.

Unlike OpenAI's original CLIP tokenizer and transformers 4's Python one, the reference applies
no ftfy fixing and no HTML unescaping: "&amp;" stays as typed. So does sdrt.
"""

from __future__ import annotations

import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import regex

from sdrt.errors import ModelFolderError
from sdrt.runtime.text.bpe import merge_word
from sdrt.runtime.text.checks import check_text
from sdrt.runtime.text.tokenizer_files import END_OF_WORD, read_tokenizer_folder

# Byte-level pre-tokenizer pattern (GPT-2's), applied inside each CLIP piece as the reference does.
BYTE_LEVEL_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# The CLIP split after the alternatives for the bos/eos strings, which are prepended at load time.
CLIP_PATTERN_TAIL = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
WHITESPACE_RUN = regex.compile(r"\s+")
WORD_CACHE_SIZE = 65536
# Words longer than this are not cached: they are rare, and the cache's memory stays bounded
# (WORD_CACHE_SIZE x this many characters at most).
MAX_CACHED_WORD_CHARS = 64


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {byte: chr(code) for byte, code in zip(printable, codes)}


BYTE_TO_CHAR = _bytes_to_unicode()
CHAR_TO_BYTE = {char: byte for byte, char in BYTE_TO_CHAR.items()}
# str.translate table: a Latin-1 decoded byte string becomes its byte-level characters.
LATIN1_TO_BYTE_LEVEL = {byte: char for byte, char in BYTE_TO_CHAR.items()}


def to_byte_level(word: str) -> str:
    """The word's UTF-8 bytes as GPT-2 byte-level characters."""
    return word.encode("utf-8").decode("latin-1").translate(LATIN1_TO_BYTE_LEVEL)


def normalize(text: str) -> str:
    """NFC, whitespace runs to one space, per-character lowercase (no final-sigma rule)."""
    text = unicodedata.normalize("NFC", text)
    text = WHITESPACE_RUN.sub(" ", text)
    # str.lower() applies Unicode's context rule only to capital sigma: neutralize it first.
    return text.replace("Σ", "σ").lower()


@dataclass(frozen=True)
class TokenizedPrompts:
    """Token ids of a batch, padded and truncated to the text encoder's length."""

    input_ids: np.ndarray  # int64 [batch, max_length]
    lengths: list[int]  # tokens per prompt before padding, bos and eos included
    dropped_text: list[str]  # per prompt, the text that truncation removed ("" if none)

    @property
    def truncated(self) -> bool:
        return any(self.dropped_text)


class ClipTokenizer:
    """CLIP BPE tokenizer: `encode` turns prompts into the text encoder's `input_ids`.

    Immutable after construction apart from a word cache, so one instance may be shared by
    threads (the cache is guarded by a lock).
    """

    def __init__(
        self,
        vocab: dict[str, int],
        merges: Sequence[tuple[str, str]],
        *,
        bos_token: str,
        eos_token: str,
        pad_token: str,
        unk_token: str,
        max_length: int,
        added_tokens: dict[str, int] | None = None,
        split_pattern: str | None = None,
    ):
        if max_length < 2:
            raise ModelFolderError(f"tokenizer max_length must be at least 2, got {max_length}")
        self.vocab = vocab
        self.id_to_token = {index: token for token, index in vocab.items()}
        self.merge_ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.max_length = max_length
        self.bos_token, self.eos_token, self.pad_token, self.unk_token = (
            bos_token,
            eos_token,
            pad_token,
            unk_token,
        )
        specials = dict(added_tokens or {})
        for token in (bos_token, eos_token, pad_token, unk_token):
            if token not in specials:
                if token not in vocab:
                    raise ModelFolderError(f"special token {token!r} is not in the vocabulary")
                specials[token] = vocab[token]
        self.special_tokens = specials
        self.id_to_token.update({index: token for token, index in specials.items()})
        self.bos_id = specials[bos_token]
        self.eos_id = specials[eos_token]
        self.pad_id = specials[pad_token]
        self.unk_id = specials[unk_token]
        # Leftmost match, longest first among those starting at the same place.
        by_length = sorted(specials, key=len, reverse=True)
        self._special_split = regex.compile("|".join(regex.escape(t) for t in by_length))
        if split_pattern is None:
            literals = "|".join(regex.escape(t) for t in dict.fromkeys((bos_token, eos_token)))
            split_pattern = f"{literals}|{CLIP_PATTERN_TAIL}"
        self._clip_split = regex.compile(split_pattern)
        self._byte_level_split = regex.compile(BYTE_LEVEL_PATTERN)
        self._cache: dict[str, tuple[int, ...]] = {}
        self._cache_lock = threading.Lock()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_folder(cls, folder: str | Path) -> ClipTokenizer:
        """Load from a tokenizer folder, or from a model folder that has a `tokenizer/` inside
        (sdrt.runtime.text.tokenizer_files reads and checks the files)."""
        folder = Path(folder)
        if (folder / "tokenizer").is_dir():
            folder = folder / "tokenizer"
        if not folder.is_dir():
            raise ModelFolderError(f"tokenizer folder {folder} does not exist")
        return cls(**read_tokenizer_folder(folder))

    # ------------------------------------------------------------------ encoding
    def tokenize(self, text: str) -> list[int]:
        """Content token ids of one prompt: no bos/eos, no truncation, no padding."""
        check_text(text, "prompt")
        ids: list[int] = []
        position = 0
        for match in self._special_split.finditer(text):
            self._tokenize_segment(text[position : match.start()], ids)
            ids.append(self.special_tokens[match.group()])
            position = match.end()
        self._tokenize_segment(text[position:], ids)
        return ids

    def encode(self, prompts: str | Sequence[str]) -> TokenizedPrompts:
        """Ids for the text encoder: [bos, tokens..., eos, pad...] of length `max_length`.

        Prompts longer than `max_length - 2` tokens are cut (the eos is kept); what was cut is
        reported in `dropped_text` so callers can warn, as diffusers does.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        capacity = self.max_length - 2
        input_ids = np.full((len(prompts), self.max_length), self.pad_id, dtype=np.int64)
        lengths, dropped = [], []
        for row, prompt in enumerate(prompts):
            content = self.tokenize(prompt)
            kept = content[:capacity]
            sequence = [self.bos_id, *kept, self.eos_id]
            input_ids[row, : len(sequence)] = sequence
            lengths.append(len(sequence))
            dropped.append(self.decode(content[capacity:]))
        return TokenizedPrompts(input_ids=input_ids, lengths=lengths, dropped_text=dropped)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids (special tokens kept), words separated by single spaces."""
        text = "".join(self.id_to_token.get(int(i), self.unk_token) for i in ids)
        data = bytearray()
        for char in text.replace(END_OF_WORD, " "):
            byte = CHAR_TO_BYTE.get(char)
            data.extend(char.encode("utf-8") if byte is None else (byte,))
        return data.decode("utf-8", errors="replace").strip()

    # ------------------------------------------------------------------ internals
    def pre_tokenize(self, normalized: str) -> list[str]:
        """Words of normalized text, before byte mapping: the CLIP split, then the byte-level one."""
        return [
            word for piece in self._clip_split.findall(normalized) for word in self._byte_level_split.findall(piece)
        ]

    def _tokenize_segment(self, segment: str, ids: list[int]) -> None:
        if segment:
            for word in self.pre_tokenize(normalize(segment)):
                ids.extend(self._word_ids(word))

    def _word_ids(self, word: str) -> tuple[int, ...]:
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        symbols = list(to_byte_level(word))
        symbols[-1] += END_OF_WORD
        symbols = merge_word(symbols, self.merge_ranks)
        result = tuple(self.vocab.get(symbol, self.unk_id) for symbol in symbols)
        if len(word) <= MAX_CACHED_WORD_CHARS:
            with self._cache_lock:
                if len(self._cache) >= WORD_CACHE_SIZE:
                    self._cache.clear()
                self._cache[word] = result
        return result
