"""Checks on the text a user sends: a bounded length, and real Unicode text.

A prompt reaches sdrt from a shell (undecodable bytes arrive as Python's surrogate escapes,
U+DC80..U+DCFF), a file, or JSON (whose `\\ud800` escapes can carry lone surrogates). Neither
is text the tokenizer or a PNG's UTF-8 text chunk can hold, so each is one clear error naming
the field, before any work is done.
"""

from __future__ import annotations

from sdrt.errors import GenerationError

#: The longest prompt accepted, in characters. The text encoder sees a few hundred tokens at
#: most; this bound keeps tokenizing any accepted prompt in milliseconds.
MAX_PROMPT_CHARS = 32_768
# Python's surrogateescape error handler maps an undecodable byte B to U+DC00 + B (B >= 0x80).
ESCAPED_BYTES = range(0xDC80, 0xDD00)
ESCAPE_BASE = 0xDC00


def check_text(text: str, param: str, limit: int = MAX_PROMPT_CHARS) -> None:
    """Raise GenerationError(param) unless `text` is encodable UTF-8 of at most `limit` chars."""
    if not isinstance(text, str):
        raise GenerationError(f"{param} must be text, got {type(text).__name__}", param)
    if len(text) > limit:
        raise GenerationError(f"{param} has {len(text)} characters; the limit is {limit}", param)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        code = ord(text[error.start])
        if code in ESCAPED_BYTES:
            raise GenerationError(
                f"{param} is not valid UTF-8 (byte 0x{code - ESCAPE_BASE:02x} at character "
                f"{error.start}); save it as UTF-8 text",
                param,
            ) from None
        raise GenerationError(
            f"{param} holds a lone surrogate U+{code:04X} at character {error.start}, which is not text", param
        ) from None
