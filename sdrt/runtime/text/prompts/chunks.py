"""A prompt's weighted fragments as chunks of token ids, each the text encoder's full length.

A1111's rules (`sd_hijack_clip.py`): tokens go into chunks of `length - 2` (75 for CLIP), each
chunk then framed by the start and end tokens and padded to the encoder's length (77). When a
chunk is full and the token that does not fit is not a comma, the tokens after the chunk's last
comma move to the next chunk if that comma is among its last COMMA_BACKTRACK tokens, so a
phrase is not cut in two. BREAK closes the current chunk. Padding is the end token, and after
the first end token a tokenizer with another pad token (SD 2.x's and SDXL's OpenCLIP) gets its
pad token, as the text encoders were trained. Start, end and padding weigh 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from sdrt.runtime.text.prompts.comfy_weights import parse_comfy_weights
from sdrt.runtime.text.prompts.emphasis import BREAK, EmphasisMode, parse_emphasis
from sdrt.runtime.text.tokenizer import ClipTokenizer

if TYPE_CHECKING:
    from sdrt.runtime.text.token_tables import TokenTable

#: A1111's `comma_padding_backtrack` default: how far back a comma may be to move the words after it.
COMMA_BACKTRACK = 20
COMMA = ",</w>"


@dataclass(frozen=True)
class TokenChunks:
    ids: np.ndarray  # int64 [chunks, encoder length]
    weights: np.ndarray  # float32 [chunks, encoder length]
    token_count: int  # the prompt's tokens (without start, end and padding)
    embeddings: tuple[str, ...] = ()  # the textual-inversion embeddings the prompt uses

    @property
    def count(self) -> int:
        return len(self.ids)


def text_chunks(
    text: str,
    emphasis: EmphasisMode,
    tokenizer: ClipTokenizer,
    table: TokenTable | None = None,
    param: str = "prompt",
) -> TokenChunks:
    """A prompt text's chunks: its emphasis fragments if the mode parses them, else the text as
    one (`param` names the text's field in an emphasis error)."""
    if not emphasis.parses:
        return chunk_fragments([(text, 1.0)], tokenizer, table)
    if not emphasis.a1111_syntax:
        return chunk_fragments(parse_comfy_weights(text, param), tokenizer, table)
    return chunk_fragments(parse_emphasis(text, param), tokenizer, table)


def chunk_fragments(fragments: list, tokenizer: ClipTokenizer, table: TokenTable | None = None) -> TokenChunks:
    """`fragments` from sdrt.runtime.text.prompts.emphasis.parse_emphasis (or [(text, 1.0)]). With a
    token `table`, a trigger word's tokens become its embedding's ids (A1111: all in one chunk,
    a new chunk if they do not fit in this one; the word's weight applies to each)."""
    capacity = tokenizer.max_length - 2
    comma = tokenizer.vocab.get(COMMA)
    rows: list[tuple[list[int], list[float]]] = []
    tokens: list[int] = []
    weights: list[float] = []
    last_comma = -1
    count = 0
    used: dict[str, None] = {}

    def close() -> None:
        nonlocal tokens, weights, last_comma
        rows.append((tokens, weights))
        tokens, weights, last_comma = [], [], -1

    for fragment in fragments:
        if fragment is BREAK:
            close()
            continue
        text, weight = fragment
        ids = tokenizer.tokenize(text)
        count += len(ids)
        position = 0
        while position < len(ids):
            token = ids[position]
            if token == comma:
                last_comma = len(tokens)
            elif len(tokens) == capacity and last_comma != -1 and len(tokens) - last_comma <= COMMA_BACKTRACK:
                moved = tokens[last_comma + 1 :], weights[last_comma + 1 :]
                tokens, weights = tokens[: last_comma + 1], weights[: last_comma + 1]
                close()
                tokens, weights = list(moved[0]), list(moved[1])
            if len(tokens) == capacity:
                close()
            trigger = table.match(ids, position) if table is not None else None
            if trigger is None:
                tokens.append(token)
                weights.append(weight)
                position += 1
                continue
            if len(tokens) + len(trigger.ids) > capacity:
                close()
            tokens += trigger.ids
            weights += [weight] * len(trigger.ids)
            position += len(trigger.tokens)
            used[trigger.name] = None
    if tokens or not rows:
        close()
    ids = np.full((len(rows), tokenizer.max_length), tokenizer.pad_id, dtype=np.int64)
    weight_rows = np.ones((len(rows), tokenizer.max_length), dtype=np.float32)
    for row, (chunk_tokens, chunk_weights) in enumerate(rows):
        framed = [
            tokenizer.bos_id,
            *chunk_tokens,
            *[tokenizer.eos_id] * (capacity - len(chunk_tokens)),
            tokenizer.eos_id,
        ]
        ids[row] = framed
        ids[row, framed.index(tokenizer.eos_id) + 1 :] = tokenizer.pad_id  # a no-op where pad is the end token
        weight_rows[row, 1 : 1 + len(chunk_weights)] = chunk_weights
    return TokenChunks(ids, weight_rows, count, tuple(used))
