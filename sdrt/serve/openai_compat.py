"""What makes the OpenAI routes a drop-in for apps written against OpenAI: its model names (the
served model), `quality` as step presets, `style` (a server prompt style of that name, else a
warning), and the images that `response_format=url` points at (kept for a while, in memory)."""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from sdrt.serve.schemas import RequestError

#: The OpenAI route's steps when neither `steps` nor a `quality` preset names them.
OPENAI_DEFAULT_STEPS = 30
#: OpenAI's image model names: each one means the model served now, as if `model` were not sent.
OPENAI_MODEL_PREFIXES = ("dall-e-", "gpt-image-", "chatgpt-image-")
#: The models whose answer is a URL when `response_format` is not sent (OpenAI's DALL-E default).
URL_BY_DEFAULT_MODELS = ("dall-e-2", "dall-e-3")
URL, B64_JSON = "url", "b64_json"
RESPONSE_FORMATS = (URL, B64_JSON)
#: `quality` as steps: DALL-E 3's standard/hd, GPT Image's low/medium/high(/xhigh/max); auto is
#: the default. A request's own `steps` wins over its quality.
QUALITY_STEPS = {
    "auto": OPENAI_DEFAULT_STEPS,
    "standard": OPENAI_DEFAULT_STEPS,
    "hd": 50,
    "low": 15,
    "medium": OPENAI_DEFAULT_STEPS,
    "high": 50,
    "xhigh": 75,
    "max": 100,
}
#: DALL-E 3's styles; each applies the server's prompt style of that name (`--styles`), if any.
OPENAI_STYLES = ("vivid", "natural")
WARNINGS_HEADER = "x-sdrt-warnings"


def is_openai_model(name: str | None) -> bool:
    return name is not None and name.strip().lower().startswith(OPENAI_MODEL_PREFIXES)


def response_format_of(value: str | None, model: str | None) -> str:
    if value is None:
        return URL if model is not None and model.strip().lower() in URL_BY_DEFAULT_MODELS else B64_JSON
    if value not in RESPONSE_FORMATS:
        raise RequestError(
            400, f"response_format: choose {' or '.join(RESPONSE_FORMATS)}, not {value[:40]!r}", "response_format"
        )
    return value


def steps_of(steps: int | None, quality: str | None) -> int:
    if steps is not None:
        return steps
    if quality is None:
        return OPENAI_DEFAULT_STEPS
    if quality not in QUALITY_STEPS:
        raise RequestError(
            400, f"quality: choose one of {', '.join(QUALITY_STEPS)} (or send steps), not {quality[:40]!r}", "quality"
        )
    return QUALITY_STEPS[quality]


def style_of(style: str | None, styles: dict) -> tuple[str | None, str | None]:
    """(the server's prompt style to apply, or a warning) for OpenAI's `style`."""
    if style is None:
        return None, None
    if style not in OPENAI_STYLES:
        raise RequestError(400, f"style: choose {' or '.join(OPENAI_STYLES)}, not {style[:40]!r}", "style")
    named = next((name for name in styles if name.lower() == style), None)
    if named is not None:
        return named, None
    return None, f"style: {style!r} is not one of this server's prompt styles (--styles), so it has no effect"


@dataclass
class _Kept:
    expires: float
    png: bytes


class ImageStore:
    """The PNGs that `response_format=url` answers point at: each kept `ttl_s` seconds, at most
    `capacity` at once (the oldest dropped first), so memory stays bounded."""

    def __init__(self, ttl_s: float, capacity: int, clock: Callable[[], float] = time.monotonic):
        self.ttl_s, self.capacity, self.clock = ttl_s, capacity, clock
        self._kept: OrderedDict[str, _Kept] = OrderedDict()

    def _drop_expired(self) -> None:
        now = self.clock()
        while self._kept and next(iter(self._kept.values())).expires <= now:
            self._kept.popitem(last=False)

    def put(self, png: bytes) -> str:
        """Keep `png`; its id (unguessable: the URL is the only handle on it)."""
        self._drop_expired()
        while len(self._kept) >= self.capacity:
            self._kept.popitem(last=False)
        name = secrets.token_urlsafe(16)
        self._kept[name] = _Kept(self.clock() + self.ttl_s, png)
        return name

    def get(self, name: str) -> bytes | None:
        self._drop_expired()
        kept = self._kept.get(name)
        return None if kept is None else kept.png

    def __len__(self) -> int:
        self._drop_expired()
        return len(self._kept)
