"""Image sizes as users write them: 'WIDTHxHEIGHT', or one number for a square."""

from __future__ import annotations

from sdrt.errors import ConfigError

#: The most digits a size's number may have: far beyond any image, and it keeps int() from
#: reading thousands of digits (or raising at Python's digit limit).
MAX_SIZE_DIGITS = 9
#: How much of a malformed size an error quotes.
SHOWN_CHARS = 40


class SizeError(ConfigError):
    """A size that is not WIDTHxHEIGHT in positive whole pixels; `param` names the option or field."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def parse_size(text: str, param: str) -> tuple[int, int]:
    """'WIDTHxHEIGHT' (or 'N' for N x N) -> (height, width), the order of an array's shape.
    Only ASCII digits count (int() would take other scripts' digits, str.isdigit superscripts)."""
    width, sep, height = str(text).lower().partition("x")
    if not sep:
        height = width
    width, height = width.strip(), height.strip()
    if (
        not all(part.isascii() and part.isdigit() and len(part) <= MAX_SIZE_DIGITS for part in (width, height))
        or int(width) < 1
        or int(height) < 1
    ):
        shown = str(text) if len(str(text)) <= SHOWN_CHARS else str(text)[:SHOWN_CHARS] + "..."
        raise SizeError(f"{param} must be WIDTHxHEIGHT in pixels, got {shown!r}", param)
    return int(height), int(width)
