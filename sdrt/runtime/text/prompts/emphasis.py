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
- "None": no emphasis syntax at all: brackets and BREAK are text;
- "ComfyUI": ComfyUI's weights and syntax instead of A1111's (sdrt.runtime.text.prompts.comfy_weights:
  each weighted token moved from the empty prompt's state, no rescaling; no BREAK, editing or tags).
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
    #: A1111's prompt language (emphasis, BREAK, editing, LoRA tags); else ComfyUI's weights only.
    a1111_syntax: bool = True
    #: Weights move a token's state from the empty prompt's (ComfyUI): apply() needs `empty`.
    relative_to_empty: bool = False

    def apply(self, hidden: np.ndarray, weights: np.ndarray, empty: np.ndarray | None = None) -> np.ndarray:
        """`hidden` [chunk, tokens, width] of one text's chunks, `weights` [chunk, tokens];
        `empty` [tokens, width]: the empty prompt's states (for a relative_to_empty mode)."""
        if not self.weighs or np.all(weights == 1):
            return hidden
        if self.relative_to_empty:
            assert empty is not None  # the encoder encodes the empty prompt for this mode
            w = weights[..., None].astype(hidden.dtype)
            return np.where(w != 1, (hidden - empty) * w + empty, hidden)
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
        EmphasisMode("ComfyUI", parses=True, weighs=True, rescales=False, a1111_syntax=False, relative_to_empty=True),
    )
}
DEFAULT_EMPHASIS = "Original"
COMFYUI_EMPHASIS = "ComfyUI"


def emphasis_mode(name: str) -> EmphasisMode:
    mode = EMPHASIS_MODES.get(name)
    if mode is None:
        raise GenerationError(f"unknown emphasis mode {name!r}; choose one of {', '.join(EMPHASIS_MODES)}", "emphasis")
    return mode


#: The deepest emphasis brackets may nest (open ones counted, closed or not). Each fragment is
#: multiplied once by each bracket around it, in the order they close (A1111's order, so every
#: weight is A1111's to the last bit): the work is the fragments times their depth, linear in
#: the prompt with this bound. A1111's weights 64 deep are 1.1**64 = 490 at the most.
MAX_EMPHASIS_DEPTH = 64
#: The largest weight a token may get (a fragment's product of weights, in absolute value):
#: hidden states times a larger weight leave any range a denoiser was trained on (fp16
#: engines overflow at 65504), and A1111's useful weights are a few units.
MAX_EMPHASIS_WEIGHT = 1000.0
#: How much of a weight an error quotes.
SHOWN_WEIGHT_CHARS = 20


class _Emphasis:
    """One parse. `work` counts the fragment multiplications done (what the depth bound keeps
    linear; tests read it)."""

    def __init__(self, text: str, param: str):
        self.text, self.param = text, param
        self.fragments: list[list] = []  # [text, weight], or [None, None] for BREAK
        self.open_round: list[int] = []
        self.open_square: list[int] = []
        self.work = 0

    def scale(self, start: int, factor: float) -> None:
        """Multiply every fragment since `start` (those inside the bracket that closes)."""
        fragments = self.fragments
        self.work += len(fragments) - start
        for index in range(start, len(fragments)):
            if fragments[index][0] is not None:
                fragments[index][1] *= factor

    def open(self, stack: list[int]) -> None:
        if len(self.open_round) + len(self.open_square) >= MAX_EMPHASIS_DEPTH:
            raise GenerationError(
                f"{self.param} nests emphasis brackets more than {MAX_EMPHASIS_DEPTH} deep (unclosed ones "
                "count); close them, or write \\( and \\[ for literal brackets",
                self.param,
            )
        stack.append(len(self.fragments))

    def parse(self) -> list[tuple[str, float] | None]:
        fragments, open_round, open_square = self.fragments, self.open_round, self.open_square
        for match in _TOKEN.finditer(self.text):
            kind = match.lastgroup if match.lastgroup != "number" else "weight"
            value = match.group(0)
            if kind == "escaped":
                fragments.append([value[1:], 1.0])
            elif kind == "open":
                self.open(open_round if value == "(" else open_square)
            elif kind == "weight" and open_round:
                self.scale(open_round.pop(), _weight(match.group("number"), self.param))
            elif kind == "weight":  # `:1.2)` with no `(` open: A1111 reads it as text
                fragments.append([value, 1.0])
            elif kind == "close" and value == ")" and open_round:
                self.scale(open_round.pop(), ROUND_FACTOR)
            elif kind == "close" and value == "]" and open_square:
                self.scale(open_square.pop(), SQUARE_FACTOR)
            elif kind == "close":
                fragments.append([value, 1.0])
            else:
                for index, part in enumerate(_BREAK.split(value)):
                    if index:
                        fragments.append([None, None])
                    fragments.append([part, 1.0])
        for start in open_round:
            self.scale(start, ROUND_FACTOR)
        for start in open_square:
            self.scale(start, SQUARE_FACTOR)
        return self.merged()

    def merged(self) -> list[tuple[str, float] | None]:
        """Runs of equal weight as one fragment (joined once, so the merge stays linear)."""
        runs: list[tuple[list[str], float] | None] = []
        for text, weight in self.fragments or [["", 1.0]]:
            if text is None:
                runs.append(None)
            elif runs and runs[-1] is not None and runs[-1][1] == weight:
                runs[-1][0].append(text)
            else:
                self.check(weight)
                runs.append(([text], weight))
        return [BREAK if run is None else ("".join(run[0]), run[1]) for run in runs]

    def check(self, weight: float) -> None:
        if not abs(weight) <= MAX_EMPHASIS_WEIGHT:  # also a product that overflowed to inf
            raise GenerationError(
                f"{self.param}: emphasis weights multiply to {weight:g} for some of its text; a token's "
                f"weight must be within +-{MAX_EMPHASIS_WEIGHT:g} (nested brackets multiply their weights)",
                self.param,
            )


def parse_emphasis(text: str, param: str = "prompt") -> list[tuple[str, float] | None]:
    """(text, weight) fragments, with BREAK (None) between chunks; runs of equal weight merged.
    A GenerationError naming `param` for a malformed or too large weight, or brackets nested
    deeper than MAX_EMPHASIS_DEPTH."""
    return _Emphasis(text, param).parse()


def _weight(number: str, param: str) -> float:
    shown = number if len(number) <= SHOWN_WEIGHT_CHARS else number[:SHOWN_WEIGHT_CHARS] + "..."
    try:
        value = float(number)
    except ValueError:
        raise GenerationError(
            f"{param} has a malformed emphasis weight {shown!r}: write a number, e.g. (text:1.2)", param
        ) from None
    if not math.isfinite(value) or abs(value) > MAX_EMPHASIS_WEIGHT:
        raise GenerationError(
            f"{param} has an emphasis weight {shown!r} that is not finite or too large: a token's weight must be "
            f"within +-{MAX_EMPHASIS_WEIGHT:g}",
            param,
        )
    return value
