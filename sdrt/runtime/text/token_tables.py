"""Each text encoder's extra token rows (textual-inversion vectors) and the trigger words that
address them: built once at load from the embeddings (sdrt.runtime.text.embeddings), read by the
chunker (sdrt.runtime.text.prompts.chunks) and fed to the encoder as `extra_token_embeddings`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sdrt.runtime.text.embeddings import Embedding
from sdrt.runtime.text.tokenizer import ClipTokenizer


@dataclass(frozen=True)
class Trigger:
    name: str
    tokens: tuple[int, ...]  # the trigger word's token ids
    ids: tuple[int, ...]  # the ids of its vectors: rows of the extended table


class TokenTable:
    def __init__(self, rows: np.ndarray, triggers: list[Trigger]):
        self.rows = rows  # float32 [extra rows (at least 1), width]
        self.by_first: dict[int, list[Trigger]] = {}
        for trigger in sorted(triggers, key=lambda t: len(t.tokens), reverse=True):  # longest match first
            self.by_first.setdefault(trigger.tokens[0], []).append(trigger)

    @classmethod
    def build(
        cls, embeddings: list[Embedding], component: str, tokenizer: ClipTokenizer, table_rows: int, width: int
    ) -> TokenTable:
        vectors, triggers, next_id = [], [], table_rows
        for embedding in embeddings:
            matrix = embedding.for_encoder(component)
            tokens = tuple(tokenizer.tokenize(embedding.name))
            ids = tuple(range(next_id, next_id + len(matrix)))
            next_id += len(matrix)
            vectors.append(matrix)
            if tokens:
                triggers.append(Trigger(embedding.name, tokens, ids))
        rows = np.concatenate(vectors) if vectors else np.zeros((1, width), np.float32)
        return cls(rows, triggers)

    def match(self, tokens: list[int], position: int) -> Trigger | None:
        for trigger in self.by_first.get(tokens[position], ()):
            if tuple(tokens[position : position + len(trigger.tokens)]) == trigger.tokens:
                return trigger
        return None
