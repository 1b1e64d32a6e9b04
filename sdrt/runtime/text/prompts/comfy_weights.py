"""ComfyUI's prompt weights (comfy/sd1_clip.py: token_weights, parse_parentheses,
escape_important), which differ from A1111's emphasis (sdrt.runtime.text.prompts.emphasis):

- `(text)` multiplies the weight of `text` by 1.1; `(text:w)` SETS it to w (nested weights do
  not multiply: `((a:1.2))` is 1.2); `[text]` is text; `\\(` and `\\)` are literal brackets and
  every other backslash is kept; no BREAK, prompt editing or LoRA tags;
- a weighted token's hidden state is moved from the empty prompt's at its position:
  z = (z - z_empty) * w + z_empty, with no mean restoration (the "ComfyUI" emphasis mode).
"""

from __future__ import annotations

import math

from sdrt.errors import GenerationError
from sdrt.runtime.text.prompts.emphasis import MAX_EMPHASIS_WEIGHT, ROUND_FACTOR

#: escape_important's placeholders for the escaped brackets.
_ESCAPED_CLOSE, _ESCAPED_OPEN = "\0\1", "\0\2"


def _parentheses(text: str) -> list[str]:
    """parse_parentheses: the top-level bracketed groups and the text between them."""
    parts: list[str] = []
    current, depth = "", 0
    for char in text:
        if char == "(":
            if depth == 0:
                if current:
                    parts.append(current)
                current = "("
            else:
                current += char
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                parts.append(current + ")")
                current = ""
            else:
                current += char
        else:
            current += char
    if current:
        parts.append(current)
    return parts


def _weights(text: str, weight: float) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for part in _parentheses(text):
        if len(part) >= 2 and part[0] == "(" and part[-1] == ")":
            inner, inner_weight = part[1:-1], weight * ROUND_FACTOR
            colon = inner.rfind(":")
            if colon > 0:
                try:
                    inner_weight = float(inner[colon + 1 :])
                    inner = inner[:colon]
                except ValueError:
                    pass
            out += _weights(inner, inner_weight)
        else:
            out.append((part, weight))
    return out


def parse_comfy_weights(text: str, param: str = "prompt") -> list[tuple[str, float]]:
    """(text, weight) fragments as ComfyUI weighs a prompt; a GenerationError naming `param`
    for a weight that is not finite or past MAX_EMPHASIS_WEIGHT."""
    escaped = text.replace("\\)", _ESCAPED_CLOSE).replace("\\(", _ESCAPED_OPEN)
    fragments = []
    for part, weight in _weights(escaped, 1.0):
        if not math.isfinite(weight) or abs(weight) > MAX_EMPHASIS_WEIGHT:
            raise GenerationError(
                f"{param} has a weight {weight:g}; a token's weight must be finite and within "
                f"+-{MAX_EMPHASIS_WEIGHT:g}",
                param,
            )
        # ComfyUI tokenizes the words of a fragment with newlines as spaces.
        words = part.replace(_ESCAPED_CLOSE, ")").replace(_ESCAPED_OPEN, "(").replace("\n", " ")
        fragments.append((words, weight))
    return fragments or [("", 1.0)]
