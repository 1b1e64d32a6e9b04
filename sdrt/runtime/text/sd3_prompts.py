"""A1111's prompt language on Stable Diffusion 3's text encoders.

- CLIP-L and CLIP-G read the emphasis fragments (sdrt.runtime.text.prompts.emphasis) as SDXL's
  encoders do, each token weighted by its fragment and the states weighted by the emphasis mode
  (sdrt.runtime.text.sd3_encoders), in one chunk: SD3's transformer takes 77 CLIP tokens, so the
  fragments' tokens are cut at 75 as diffusers cuts a plain prompt (no comma back-off: that only
  moves words between chunks) and framed as the tokenizer frames them. A BREAK, which starts a new
  chunk on SD 1.x and SDXL, reads as a space, with a warning.
- T5 reads the plain text: the fragments joined, brackets and weights removed (BREAK a space),
  so "a (red fox:1.3)" gives T5 the ids of "a red fox". StableDiffusion3Pipeline applies no
  weighting anywhere; a prompt without syntax gives exactly its conditioning.
"""

from __future__ import annotations

import numpy as np

from sdrt.runtime.text.prompts.emphasis import BREAK, EmphasisMode, parse_emphasis
from sdrt.runtime.text.tokenizer import ClipTokenizer, TokenizedPrompts

#: The tokens a chunk frames besides the prompt's: the start and end tokens.
FRAME_TOKENS = 2
BREAK_WARNING = "BREAK reads as a space on Stable Diffusion 3 (its CLIP encoders take one chunk of 77 tokens)"

Fragments = list[tuple[str, float] | None]


def prompt_fragments(text: str, emphasis: EmphasisMode, param: str) -> Fragments:
    """The text's weighted fragments (the whole text at weight 1 when the mode parses no syntax)."""
    return parse_emphasis(text, param) if emphasis.parses else [(text, 1.0)]


def plain_text(fragments: Fragments) -> str:
    """What T5 reads: the fragments' text, syntax removed."""
    return "".join(" " if fragment is BREAK else fragment[0] for fragment in fragments)


def weighted_clip_ids(texts: list[Fragments], tokenizer: ClipTokenizer) -> tuple[TokenizedPrompts, np.ndarray]:
    """Per text: ids [bos, tokens (cut at max_length - 2), eos, pad...] as ClipTokenizer.encode
    gives them, and float32 weights of the same shape (1 for the frame and padding)."""
    capacity = tokenizer.max_length - FRAME_TOKENS
    ids = np.full((len(texts), tokenizer.max_length), tokenizer.pad_id, dtype=np.int64)
    weights = np.ones((len(texts), tokenizer.max_length), dtype=np.float32)
    lengths, dropped = [], []
    for row, fragments in enumerate(texts):
        tokens: list[int] = []
        token_weights: list[float] = []
        for fragment in fragments:
            if fragment is BREAK:
                continue
            text, weight = fragment
            piece = tokenizer.tokenize(text)
            tokens += piece
            token_weights += [weight] * len(piece)
        kept = tokens[:capacity]
        sequence = [tokenizer.bos_id, *kept, tokenizer.eos_id]
        ids[row, : len(sequence)] = sequence
        weights[row, 1 : 1 + len(kept)] = token_weights[:capacity]
        lengths.append(len(sequence))
        dropped.append(tokenizer.decode(tokens[capacity:]))
    return TokenizedPrompts(input_ids=ids, lengths=lengths, dropped_text=dropped), weights


def has_break(texts: list[Fragments]) -> bool:
    return any(fragment is BREAK for fragments in texts for fragment in fragments)
