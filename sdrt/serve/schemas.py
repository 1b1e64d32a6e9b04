"""The service's load-time settings, its JSON errors, and the request bodies of both APIs."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

from sdrt.runtime.features.controlnet.units import MAX_SCALE as MAX_CONTROL_SCALE
from sdrt.runtime.features.hires import MAX_SCALE as MAX_HIRES_SCALE
from sdrt.runtime.request import DEFAULT_GUIDANCE, MAX_SEED
from sdrt.runtime.request_checks import MAX_STEPS
from sdrt.runtime.text.checks import MAX_PROMPT_CHARS
from sdrt.serve.kontext_fields import KontextFields
from sdrt.serve.sd3_fields import Sd3Fields

API_KEY_ENV = "SDRT_API_KEY"
OPEN_ROUTES = {"/health"}
#: The deepest nesting of lists and objects a body field may hold (A1111's settings, comments and
#: script args are a level or two deep); deeper is a 400 naming the field, never a RecursionError.
MAX_NESTING = 32
#: The largest magnitude of any number in a body (2**53: what a JSON number holds exactly); every
#: field's own bound is tighter, this one keeps arithmetic on an unbounded integer from happening.
MAX_NUMBER = 2**53
#: The largest image side (pixels) a request may ask for, as a size or a hires fix target.
MAX_SIDE = 16_384


@dataclass(frozen=True)
class ServeSettings:
    """Load-time settings of the service."""

    max_queue: int = 16  # admitted requests, running or waiting; more get 503
    concurrency: int = 1  # generate() calls at once (one saturates a CPU; more for GPUs)
    max_batch_images: int = 4  # images that compatible requests may share one call with; 1 = no batching
    batch_window_s: float = 0.0  # how long a worker waits for more compatible requests to join
    timeout_s: float = 300.0  # per request, queue wait included
    max_body_bytes: int = 20 * 2**20  # larger bodies get 413
    max_images: int = 4  # images one request may ask for (A1111: batch_size x n_iter; OpenAI: n; extras: images)
    max_steps: int = 150  # denoising steps one request may ask for
    retry_after_s: int = 5
    api_key: str | None = None
    plain_prompts: bool = False  # the OpenAI route reads prompts as plain text, not A1111's prompt language
    api_auth: tuple[tuple[str, str], ...] = ()  # A1111's --api-auth: HTTP basic (user, password) pairs
    styles_file: str | None = None  # A1111's styles.csv: the styles requests may name
    preview_every: int = 0  # steps between previews for /sdapi/v1/progress's current_image (0: none)
    randn_source: str = "GPU"  # A1111's option's starting value (CPU, GPU, NV): A1111's own default
    image_url_ttl_s: float = 3600.0  # how long a response_format=url image stays (OpenAI's: an hour)
    max_url_images: int = 64  # response_format=url images kept at once; the oldest go first
    docs: bool = True  # FastAPI's OpenAPI page at /docs and its schema at /openapi.json (behind the auth)
    comfy_dir: str | None = None  # ComfyUI routes' input/output/temp folders (default: the sdrt cache's comfy/)
    header_timeout_s: float = 20.0  # a request's line and headers must arrive within this (else closed)
    body_timeout_s: float = 120.0  # its body within this once the headers are in (else 408)
    max_connections: int | None = None  # open at once; more get 503 (None: sdrt.serve.http's default)


class RequestError(Exception):
    """An HTTP error answered as JSON; `param` names the body field at fault."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


#: OpenAI fields sdrt answers only with these values (None: not sent).
OPENAI_NEUTRAL = {
    "background": ((None, "auto", "opaque"), "transparent backgrounds are not supported"),
    "moderation": ((None, "auto", "low"), "sdrt runs no moderation model"),
    "output_format": ((None, "png"), "only png is supported"),
    "output_compression": ((None, 100), "only lossless png is supported"),
}


def error_body(message: str, param: str | None, kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def _texts(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [text for item in value for text in _texts(item)]
    if isinstance(value, dict):
        return [text for item in value.items() for text in _texts(list(item))]
    return []


def check_value(value) -> None:
    """Raise ValueError when `value` nests deeper than MAX_NESTING or holds a number past
    MAX_NUMBER (or not finite); walked without recursion, so any depth is safe to check."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list, tuple)):
            if depth >= MAX_NESTING:
                raise ValueError(f"nests deeper than {MAX_NESTING} levels")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
        elif isinstance(item, (int, float)) and not isinstance(item, bool):
            if (isinstance(item, float) and not math.isfinite(item)) or abs(item) > MAX_NUMBER:
                raise ValueError(f"holds a number past the limit of {MAX_NUMBER} (or not finite)")


class Body(BaseModel):
    """A request body: unknown fields ignored, numbers finite and bounded, values nested a few
    levels at most, every string real UTF-8 text."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _bounded(cls, value):
        check_value(value)
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _unicode_text(cls, value):
        for text in _texts(value):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as error:
                raise ValueError(f"holds a lone surrogate U+{ord(text[error.start]):04X}, which is not text") from None
        return value


class ControlNetField(Body):
    """sdrt's ControlNet unit on the OpenAI route (the OpenAI API has none): names as the CLI's."""

    model: StrictStr
    image: StrictStr  # base64
    scale: float = Field(1.0, ge=0, le=MAX_CONTROL_SCALE)
    start: float = Field(0.0, ge=0, le=1)
    end: float = Field(1.0, ge=0, le=1)
    mode: StrictStr = "balanced"
    preprocessor: StrictStr = "none"


class HiresField(Body):
    """sdrt's hires fix on the OpenAI route (sdrt.runtime.features.hires.HiresFix's fields)."""

    scale: float = Field(2.0, ge=1, le=MAX_HIRES_SCALE)
    upscaler: StrictStr = "Latent"
    steps: int = Field(0, ge=0, le=MAX_STEPS)
    strength: float = Field(0.7, gt=0, le=1)


class OpenAIImageRequest(Body, Sd3Fields, KontextFields):
    """OpenAI's image request, plus sdrt's extension fields (steps, seed, sampler, SD3's, ...). Fields
    OpenAI defines that sdrt cannot honour are refused unless neutral (check)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prompt: StrictStr = Field(max_length=MAX_PROMPT_CHARS)
    n: int = Field(1, ge=1)
    size: StrictStr | None = None
    response_format: StrictStr | None = None  # url for the DALL-E model names, else b64_json
    model: StrictStr | None = None
    user: StrictStr | None = None  # the end user's id, for the caller's own records
    safety_identifier: StrictStr | None = None  # user's newer name
    quality: StrictStr | None = None
    style: StrictStr | None = None
    background: StrictStr | None = None
    moderation: StrictStr | None = None
    output_format: StrictStr | None = None
    output_compression: int | None = None
    negative_prompt: StrictStr | None = Field(None, max_length=MAX_PROMPT_CHARS)
    steps: int | None = Field(None, ge=1, le=MAX_STEPS)  # None: the quality preset's (sdrt.serve.openai_compat)
    guidance_scale: float = Field(DEFAULT_GUIDANCE, ge=0)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    sampler: StrictStr | None = None
    scheduler: StrictStr | None = None  # sampler's earlier name, still accepted
    schedule: StrictStr = "automatic"
    strength: float | None = Field(None, gt=0, le=1)  # edits and variations
    controlnets: list[ControlNetField] = Field(default_factory=list)  # sdrt's extension
    vae: StrictStr = "full"  # sdrt's extension: "tiny" decodes with the tiny VAE
    hires: HiresField | None = None  # sdrt's extension: A1111's hires fix
    deepcache: StrictStr | int | None = None  # sdrt's extension: DeepCache "INTERVAL[:BRANCH]"
    cache: StrictStr | None = None  # sdrt's extension: a transformer step cache "NAME[:SETTINGS]"
    eta: float | None = Field(None, ge=0, le=1)  # sdrt's extension: TCD's gamma

    def check(self) -> None:
        for field, (allowed, why) in OPENAI_NEUTRAL.items():
            if getattr(self, field) not in allowed:
                raise RequestError(400, f"{field}: {why}", field)
