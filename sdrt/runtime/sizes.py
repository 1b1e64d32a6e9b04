"""Image sizes as users write them: 'WIDTHxHEIGHT', or one number for a square."""

from __future__ import annotations

from sdrt.errors import ConfigError


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
        not (width.isascii() and width.isdigit() and height.isascii() and height.isdigit())
        or int(width) < 1
        or int(height) < 1
    ):
        raise SizeError(f"{param} must be WIDTHxHEIGHT in pixels, got {text!r}", param)
    return int(height), int(width)
