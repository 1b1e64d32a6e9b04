"""A1111's prompt styles: a styles.csv (columns name, prompt, negative_prompt; A1111's older
`text` column is read as prompt) and A1111's rule for applying them, in the order named: a
style's text that holds "{prompt}" has it replaced by the prompt so far; any other is appended
after a comma (empty parts left out). Negative prompts the same way with the style's negative."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from sdrt.errors import ConfigError, GenerationError
from sdrt.runtime.files.user_files import MAX_STYLES_BYTES, read_regular_text
from sdrt.runtime.text.checks import MAX_PROMPT_CHARS

PLACEHOLDER = "{prompt}"
#: The most styles one request may name (A1111's UI picks a few); bounds the work of applying them.
MAX_STYLE_NAMES = 100
#: The longest prompt styles may produce: the prompt's own limit, so no accepted request changes;
#: checked before each style is applied, so a `{prompt} {prompt}` style named many times never
#: builds a text longer than this.
MAX_STYLED_CHARS = MAX_PROMPT_CHARS


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


def load_styles(path: str | Path) -> dict[str, Style]:
    """The styles of a styles.csv (a regular file: a FIFO or a device is refused at once)."""
    path = Path(path)
    text = read_regular_text(path, MAX_STYLES_BYTES, ConfigError, f"styles file {path}", encoding="utf-8-sig")
    try:
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    except csv.Error as error:
        raise ConfigError(f"cannot read styles file {path}: {error}") from None
    styles = {}
    for row in rows:
        name = (row.get("name") or "").strip()
        if name:
            styles[name] = Style(name, row.get("prompt") or row.get("text") or "", row.get("negative_prompt") or "")
    return styles


def merge(style_text: str, prompt: str) -> str:
    if PLACEHOLDER in style_text:
        return style_text.replace(PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def merged_length(style_text: str, prompt: str) -> int:
    """len(merge(style_text, prompt)), computed without building it."""
    count = style_text.count(PLACEHOLDER)
    if count:
        return len(style_text) + count * (len(prompt) - len(PLACEHOLDER))
    parts = [len(part) for part in (prompt.strip(), style_text.strip()) if part]
    return sum(parts) + len(", ") * (len(parts) - 1) if parts else 0


def apply_styles(prompt: str, negative: str, names, styles: dict[str, Style], param: str = "styles") -> tuple[str, str]:
    """(prompt, negative prompt) with the named styles applied in order; each text stays within
    MAX_STYLED_CHARS as it is built (one GenerationError naming `param` otherwise)."""
    names = list(names)
    if len(names) > MAX_STYLE_NAMES:
        raise GenerationError(f"{param} names {len(names)} styles; the limit is {MAX_STYLE_NAMES}", param)
    for name in names:
        if name not in styles:
            known = ", ".join(styles) or "none (start the server with --styles FILE)"
            raise GenerationError(f"unknown style {name!r}; the styles are: {known}", param)
    for name in names:
        style = styles[name]
        for which, text, current in (
            ("prompt", style.prompt, prompt),
            ("negative prompt", style.negative_prompt, negative),
        ):
            length = merged_length(text, current)
            if length > MAX_STYLED_CHARS:
                raise GenerationError(
                    f"{param}: applying style {name!r} would make the {which} {length} characters long; "
                    f"the limit is {MAX_STYLED_CHARS}",
                    param,
                )
        prompt, negative = merge(style.prompt, prompt), merge(style.negative_prompt, negative)
    return prompt, negative
