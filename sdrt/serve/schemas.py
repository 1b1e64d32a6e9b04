"""The service's load-time settings, its JSON errors, and the request bodies of both APIs."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

from sdrt.runtime.request import DEFAULT_GUIDANCE, MAX_SEED

API_KEY_ENV = "SDRT_API_KEY"
OPEN_ROUTES = {"/health"}


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
    image_url_ttl_s: float = 3600.0  # how long a response_format=url image stays (OpenAI's: an hour)
    max_url_images: int = 64  # response_format=url images kept at once; the oldest go first
    docs: bool = True  # FastAPI's OpenAPI page at /docs and its schema at /openapi.json (behind the auth)
    comfy_dir: str | None = None  # ComfyUI routes' input/output/temp folders (default: the sdrt cache's comfy/)


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


class Body(BaseModel):
    """A request body: unknown fields ignored, numbers finite, every string real UTF-8 text."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

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
    scale: float = Field(1.0, ge=0)
    start: float = Field(0.0, ge=0, le=1)
    end: float = Field(1.0, ge=0, le=1)
    mode: StrictStr = "balanced"
    preprocessor: StrictStr = "none"


class HiresField(Body):
    """sdrt's hires fix on the OpenAI route (sdrt.runtime.features.hires.HiresFix's fields)."""

    scale: float = Field(2.0, ge=1, le=4)
    upscaler: StrictStr = "Latent"
    steps: int = Field(0, ge=0)
    strength: float = Field(0.7, gt=0, le=1)


class OpenAIImageRequest(Body):
    """OpenAI's image request, plus sdrt's extension fields (steps, seed, sampler, ...). Fields
    OpenAI defines that sdrt cannot honour are refused unless neutral (check)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prompt: StrictStr
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
    negative_prompt: StrictStr | None = None
    steps: int | None = Field(None, ge=1)  # None: the quality preset's (sdrt.serve.openai_compat)
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
    eta: float | None = Field(None, ge=0, le=1)  # sdrt's extension: TCD's gamma

    def check(self) -> None:
        for field, (allowed, why) in OPENAI_NEUTRAL.items():
            if getattr(self, field) not in allowed:
                raise RequestError(400, f"{field}: {why}", field)
