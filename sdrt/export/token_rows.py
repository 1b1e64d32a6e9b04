"""Textual-inversion rows in exported text encoders: a token embedding whose ids past the
table's size read rows the runtime feeds (`extra_token_embeddings`), so embeddings load
without a re-export, and the validation inputs that exercise those rows."""

from __future__ import annotations

import torch

VALIDATION_EXTRA_TOKENS = 3  # extra rows the validation inputs use (and address)


class ExtendedTokens(torch.nn.Module):
    """A token embedding whose ids from the table's size on read the rows of `extra` (the
    textual-inversion vectors the runtime feeds), so embeddings load without a re-export."""

    def __init__(self, table: torch.nn.Embedding):
        super().__init__()
        self.table = table
        self.extra: torch.Tensor | None = None  # set by the wrapper for each call

    def forward(self, ids):
        rows = self.table.num_embeddings
        known = self.table(ids.clamp(max=rows - 1))
        added = torch.nn.functional.embedding((ids - rows).clamp(min=0), self.extra.to(known.dtype))
        return torch.where((ids >= rows).unsqueeze(-1), added, known)


def extend_tokens(model) -> ExtendedTokens:
    """Installs ExtendedTokens in a transformers text model (once) and returns it."""
    tokens = model.get_input_embeddings()
    if not isinstance(tokens, ExtendedTokens):
        tokens = ExtendedTokens(tokens)
        model.set_input_embeddings(tokens)
    return tokens


def text_inputs_maker(text_length: int, vocab: int):
    """Validation inputs of a text encoder: random ids, a few of them addressing extra rows."""

    def make(gen, batch, latent_h, latent_w, width: int):
        ids = torch.randint(0, vocab, (batch, text_length), generator=gen, dtype=torch.int32)
        ids[:, 1 : 1 + VALIDATION_EXTRA_TOKENS] = vocab + torch.arange(VALIDATION_EXTRA_TOKENS, dtype=torch.int32)
        return ids, torch.randn(VALIDATION_EXTRA_TOKENS, width, generator=gen)

    return make
