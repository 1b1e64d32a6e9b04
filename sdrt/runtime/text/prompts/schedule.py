"""Prompt editing and alternation: the text each denoising step is conditioned on.

- `[from:to:when]` reads `from` until step `when`, then `to`; `[to:when]` adds `to` at `when`,
  `[from::when]` removes `from` at `when`. A `when` with a decimal point is a fraction of the
  steps (0.25 of 20 is 5), one without is a step number; both are capped at the step count
  (A1111's current rule: its old one read any number below 1 as a fraction).
- `[a|b|c]` alternates the alternatives, one per step; an empty alternative is no text.
- Edits and alternations nest inside each other and inside emphasis brackets, whose brackets
  stay in the texts (sdrt.runtime.text.prompts.emphasis reads them later). A bracket that closes no
  group at the top level is text; a `|` outside a group, or a group that closes nothing inside
  another, makes the whole prompt one text for every step, as it does in A1111.

The result is A1111's: a list of (last step, text), steps counted from 1 as A1111 counts them;
the sampler's UNet call i (from 0) uses the first entry whose last step is >= i. A1111 counts
one step per UNet call (Heun's two calls per step count as two), and so does sdrt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

Schedule = list[tuple[int, str]]
CLOSING = {"(": ")", "[": "]"}
SEPARATORS = ":|"
#: Deeper nesting than any prompt needs; bounds the parser's recursion.
MAX_NESTING = 64
# A plain run: anything but brackets, separators and backslashes, or a backslash and the next character.
_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+", re.S)
# The `when` of an edit: a signed integer or decimal with an optional exponent, spaces around.
_WHEN = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*")


class _NoParse(Exception):
    """The text is not a group (or not a prompt) of the language."""


class _TooDeep(Exception):
    """Groups nest deeper than MAX_NESTING: the prompt is read as one text."""


@dataclass
class _Verbatim:  # emphasis brackets: rendered as written
    open: str
    parts: list
    separators: list[str]


@dataclass
class _Edit:
    before: list | None
    after: list
    when_text: str
    when: int = 0


@dataclass
class _Alternation:
    options: list[list]


def prompt_schedule(prompt: str, steps: int) -> Schedule:
    """[(last step, text), ...] for a run of `steps` steps, the last entry ending at `steps`."""
    if "[" not in prompt:  # every edit and alternation opens with one
        return [(steps, prompt)]
    try:
        nodes = _Parser(prompt).top()
    except (_NoParse, _TooDeep):
        return [(steps, prompt)]
    boundaries, alternates = {steps}, False
    for node in _walk(nodes):  # only the steps where a text can change: an edit's, or every one
        if isinstance(node, _Edit):
            value = float(node.when_text)
            when = value * steps if "." in node.when_text else value
            node.when = int(min(float(steps), max(0.0, when)))  # 1e999 is the last step, not an overflow
            if node.when >= 1:
                boundaries.add(node.when)
        elif isinstance(node, _Alternation):
            alternates = True
    if alternates:  # once, however many alternations (each changes at every step)
        boundaries.update(range(1, steps + 1))
    return [(step, _render(nodes, step)) for step in sorted(boundaries)]


class _Parser:
    """Recursive descent over the text. A group's parse depends only on where it starts, so
    each start is parsed once (a long run of stray brackets stays linear)."""

    def __init__(self, text: str):
        self.text = text
        self.groups: dict[int, tuple | None] = {}
        self.depth = 0

    def top(self) -> list:
        text, nodes, position = self.text, [], 0
        while position < len(text):
            char = text[position]
            if char in CLOSING:
                try:
                    node, position = self.group(position)
                except _NoParse:
                    node, position = char, position + 1  # a stray bracket is text
                nodes.append(node)
            elif char in "]):":
                nodes.append(char)
                position += 1
            else:
                run, position = self.plain(position)
                nodes.append(run)
        return nodes

    def plain(self, position: int) -> tuple[str, int]:
        match = _PLAIN.match(self.text, position)
        if match is None:  # `|` outside a group, or a backslash ending the prompt
            raise _NoParse
        return match.group(), match.end()

    def body(self, position: int) -> tuple[list, int]:
        """Parts up to the next separator or closing bracket at this level."""
        text, nodes = self.text, []
        while position < len(text) and text[position] not in "])" + SEPARATORS:
            node, position = self.group(position) if text[position] in CLOSING else self.plain(position)
            nodes.append(node)
        return nodes, position

    def group(self, position: int):
        if position not in self.groups:
            if self.depth >= MAX_NESTING:
                raise _TooDeep
            self.depth += 1
            try:
                self.groups[position] = self._group(position)
            except _NoParse:
                self.groups[position] = None
            finally:
                self.depth -= 1
        found = self.groups[position]
        if found is None:
            raise _NoParse
        return found

    def _group(self, position: int):
        text = self.text
        opening = text[position]
        parts, separators = [], []
        position += 1
        while True:
            body, position = self.body(position)
            parts.append(body)
            if position >= len(text):
                raise _NoParse
            char = text[position]
            position += 1
            if char == CLOSING[opening]:
                break
            if char not in SEPARATORS:
                raise _NoParse
            separators.append(char)
        if not separators or (opening == "(" and separators == [":"]):
            return _Verbatim(opening, parts, separators), position
        if opening == "[" and set(separators) == {"|"}:
            return _Alternation(parts), position
        if opening == "[" and set(separators) == {":"} and len(parts) <= 3:
            last = parts[-1]
            when = _WHEN.fullmatch(last[0]) if len(last) == 1 and isinstance(last[0], str) else None
            if when is not None:
                return _Edit(parts[0] if len(parts) == 3 else None, parts[-2], when.group(1)), position
        raise _NoParse


def _walk(nodes: list):
    for node in nodes:
        if isinstance(node, str):
            continue
        yield node
        children = (
            node.parts
            if isinstance(node, _Verbatim)
            else node.options
            if isinstance(node, _Alternation)
            else [node.before or [], node.after]
        )
        for child in children:
            yield from _walk(child)


def _render(nodes: list, step: int) -> str:
    out = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Edit):
            out.append(_render((node.before or []) if step <= node.when else node.after, step))
        elif isinstance(node, _Alternation):
            out.append(_render(node.options[(step - 1) % len(node.options)], step))
        else:
            inner = [_render(part, step) for part in node.parts]
            body = inner[0] + "".join(sep + part for sep, part in zip(node.separators, inner[1:]))
            out.append(node.open + body + CLOSING[node.open])
    return "".join(out)
