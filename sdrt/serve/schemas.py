"""The service's load-time settings, its JSON errors, and the request bodies of both APIs."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

from sdrt.runtime.prompts.emphasis import DEFAULT_EMPHASIS
from sdrt.runtime.request import DEFAULT_GUIDANCE, MAX_CLIP_SKIP, MAX_SEED

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
    max_body_bytes: int = 20 * 2**20
    max_images: int = 4
    max_steps: int = 150
    retry_after_s: int = 5
    api_key: str | None = None
    plain_prompts: bool = False  # the OpenAI route reads prompts as plain text, not A1111's prompt language
    preview_every: int = 0  # steps between previews for /sdapi/v1/progress's current_image (0: none)


class RequestError(Exception):
    """An HTTP error answered as JSON; `param` names the body field at fault."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


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


class OpenAIImageRequest(Body):
    prompt: StrictStr
    n: int = Field(1, ge=1)
    size: StrictStr | None = None
    response_format: StrictStr = "b64_json"
    model: StrictStr | None = None
    negative_prompt: StrictStr | None = None
    steps: int = Field(30, ge=1)
    guidance_scale: float = Field(DEFAULT_GUIDANCE, ge=0)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    sampler: StrictStr | None = None
    scheduler: StrictStr | None = None  # sampler's earlier name, still accepted
    controlnets: list[ControlNetField] = Field(default_factory=list)  # sdrt's extension
    vae: StrictStr = "full"  # sdrt's extension: "tiny" decodes with the tiny VAE


class A1111Overrides(Body):
    """A1111 options a request may override; the prompt-reading ones are honoured."""

    CLIP_stop_at_last_layers: int = Field(1, ge=1, le=MAX_CLIP_SKIP)
    emphasis: StrictStr = DEFAULT_EMPHASIS
    sd_vae: StrictStr = "Automatic"  # "TAESD" (or "tiny") picks the tiny VAE; others the model's


class A1111ControlNetUnit(Body):
    """One unit of the A1111 ControlNet extension's `alwayson_scripts.controlnet.args`."""

    enabled: bool = True
    image: StrictStr | dict | None = None  # base64; or {"image": ..., "mask": ...}
    input_image: StrictStr | None = None  # the extension's older name of `image`
    module: StrictStr = "none"
    model: StrictStr = "None"
    weight: float = Field(1.0, ge=0)
    guidance_start: float = Field(0.0, ge=0, le=1)
    guidance_end: float = Field(1.0, ge=0, le=1)
    control_mode: StrictStr | int = "Balanced"
    threshold_a: float = 100.0  # canny's low threshold
    threshold_b: float = 200.0  # canny's high threshold


class A1111ControlNetArgs(Body):
    args: list[A1111ControlNetUnit] = Field(default_factory=list)


class A1111Scripts(Body):
    controlnet: A1111ControlNetArgs | None = None


class A1111Txt2ImgRequest(Body):
    prompt: StrictStr = ""
    negative_prompt: StrictStr = ""
    steps: int = Field(20, ge=1)
    cfg_scale: float = Field(7.0, ge=0)
    seed: int = Field(-1, ge=-1, le=MAX_SEED)
    width: int | None = Field(None, ge=1)
    height: int | None = Field(None, ge=1)
    batch_size: int = Field(1, ge=1)
    n_iter: int = Field(1, ge=1)
    sampler_name: StrictStr | None = None
    sampler_index: StrictStr | None = None
    scheduler: StrictStr | None = None
    refiner_checkpoint: StrictStr | None = None  # the served refiner's name; None, "" or "None": no refiner
    refiner_switch_at: float = Field(0.8, gt=0, le=1)  # 1: the refiner never takes over
    override_settings: A1111Overrides = Field(default_factory=lambda: A1111Overrides())
    alwayson_scripts: A1111Scripts = Field(default_factory=lambda: A1111Scripts())


class A1111Img2ImgRequest(A1111Txt2ImgRequest):
    init_images: list[StrictStr] = Field(min_length=1)
    denoising_strength: float = Field(0.75, gt=0, le=1)
    mask: StrictStr | None = None
