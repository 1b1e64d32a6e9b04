"""Emphasis: weighted fragments of a prompt, and how the weights change the hidden states.

Syntax (A1111's `parse_prompt_attention`):
- `(text)` multiplies the weight of `text` by 1.1, `[text]` divides it by 1.1, `(text:w)` multiplies
  it by w; nesting multiplies (`((a:1.3))` is 1.43). An opening bracket never closed applies to
  the end of the prompt; a closing one never opened is text.
- `\\(`, `\\)`, `\\[`, `\\]` and `\\\\` are the literal characters; a backslash before anything else
  is dropped.
- `BREAK` (the word, upper case) ends the current 75-token chunk (sdrt.runtime.text.prompts.chunks).
- `(text:abc)` is not a weight: the colon and `abc` are text, inside an ordinary `( )`.

One difference from A1111, documented in docs/prompts.md: a BREAK inside brackets is still a
BREAK (A1111 multiplies its marker and then encodes the word "BREAK" with a negative weight).

Modes (A1111's `emphasis` option), applied to each encoded chunk of 77 tokens:
- "Original": multiply each token's hidden state by its weight, then scale the chunk so its
  mean equals the unweighted chunk's mean (the default, as in A1111);
- "No norm": multiply, no rescaling;
- "Ignore": brackets are syntax, but every weight is 1;
- "None": no emphasis syntax at all: brackets and BREAK are text.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from sdrt.errors import GenerationError

ROUND_FACTOR = 1.1  # `(text)`
SQUARE_FACTOR = 1 / 1.1  # `[text]`
BREAK = None  # the fragment list's marker for a chunk break

_TOKEN = re.compile(
    r"""
      (?P<escaped>\\[()\[\]\\]?)       # \( \) \[ \] \\ , or a lone backslash (dropped)
    | (?P<weight>:\s*(?P<number>[+-]?[.\d]+)\s*\))  # :1.3) closes a weighted bracket
    | (?P<open>[(\[])
    | (?P<close>[)\]])
    | (?P<text>[^\\()\[\]:]+|:)
    """,
    re.VERBOSE,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


@dataclass(frozen=True)
class EmphasisMode:
    name: str
    parses: bool  # brackets and BREAK are syntax
    weighs: bool  # the weights reach the hidden states
    rescales: bool  # the weighted chunk is scaled back to its unweighted mean

    def apply(self, hidden: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """`hidden` [chunk, tokens, width] of one text's chunks, `weights` [chunk, tokens]."""
        if not self.weighs or np.all(weights == 1):
            return hidden
        weighted = hidden * weights[..., None].astype(hidden.dtype)
        if not self.rescales:
            return weighted
        original = hidden.mean(axis=(1, 2), keepdims=True)
        return weighted * (original / weighted.mean(axis=(1, 2), keepdims=True))


#: The registry of emphasis modes, by A1111's names.
EMPHASIS_MODES = {
    mode.name: mode
    for mode in (
        EmphasisMode("Original", parses=True, weighs=True, rescales=True),
        EmphasisMode("No norm", parses=True, weighs=True, rescales=False),
        EmphasisMode("Ignore", parses=True, weighs=False, rescales=False),
        EmphasisMode("None", parses=False, weighs=False, rescales=False),
    )
}
DEFAULT_EMPHASIS = "Original"


def emphasis_mode(name: str) -> EmphasisMode:
    mode = EMPHASIS_MODES.get(name)
    if mode is None:
        raise GenerationError(f"unknown emphasis mode {name!r}; choose one of {', '.join(EMPHASIS_MODES)}", "emphasis")
    return mode


def parse_emphasis(text: str, param: str = "prompt") -> list[tuple[str, float] | None]:
    """(text, weight) fragments, with BREAK (None) between chunks; runs of equal weight merged."""
    fragments: list[list] = []  # [text, weight] or [None, None] for BREAK
    open_round: list[int] = []
    open_square: list[int] = []

    def scale(start: int, factor: float) -> None:
        for fragment in fragments[start:]:
            if fragment[0] is not None:
                fragment[1] *= factor

    for match in _TOKEN.finditer(text):
        kind = match.lastgroup if match.lastgroup != "number" else "weight"
        value = match.group(0)
        if kind == "escaped":
            fragments.append([value[1:], 1.0])
        elif kind == "open":
            (open_round if value == "(" else open_square).append(len(fragments))
        elif kind == "weight" and open_round:
            scale(open_round.pop(), _weight(match.group("number"), param))
        elif kind == "weight":  # `:1.2)` with no `(` open: A1111 reads it as text
            fragments.append([value, 1.0])
        elif kind == "close" and value == ")" and open_round:
            scale(open_round.pop(), ROUND_FACTOR)
        elif kind == "close" and value == "]" and open_square:
            scale(open_square.pop(), SQUARE_FACTOR)
        elif kind == "close":
            fragments.append([value, 1.0])
        else:
            for index, part in enumerate(_BREAK.split(value)):
                if index:
                    fragments.append([None, None])
                fragments.append([part, 1.0])
    for start in open_round:
        scale(start, ROUND_FACTOR)
    for start in open_square:
        scale(start, SQUARE_FACTOR)
    merged: list[list] = []
    for fragment in fragments or [["", 1.0]]:
        if merged and fragment[0] is not None and merged[-1][0] is not None and merged[-1][1] == fragment[1]:
            merged[-1][0] += fragment[0]
        else:
            merged.append(fragment)
    return [BREAK if t is None else (t, w) for t, w in merged]


def _weight(number: str, param: str) -> float:
    try:
        value = float(number)
    except ValueError:
        raise GenerationError(
            f"{param} has a malformed emphasis weight {number!r}: write a number, e.g. (text:1.2)", param
        ) from None
    if not math.isfinite(value):
        raise GenerationError(f"{param} has an emphasis weight {number!r} that is not finite", param)
    return value
