"""The ASGI app: OpenAI Images API, AUTOMATIC1111's txt2img/img2img, /health, /metrics.

One `Pipeline` is loaded once and shared. Requests pass a bounded admission count (a full
service answers 503 with Retry-After), then wait for one of `concurrency` generation slots; each
generation runs in a worker thread and checks a cancel flag at every denoising step, so a request
that exceeds its time limit (504) or whose client disconnects frees its slot. Compatible
text-to-image requests waiting together run as one batched call (sdrt.serve.batching).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import os
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from sdrt.errors import SdrtError
from sdrt.runtime.png_info import SAMPLER_NAMES, format_parameters
from sdrt.runtime.schedulers import SAMPLERS as SCHEDULERS
from sdrt.serve.batching import Job, batch_key, merged_kwargs, split_result, take_batch, take_compatible
from sdrt.serve.metrics import Metrics

API_KEY_ENV = "SDRT_API_KEY"
OPEN_ROUTES = {"/health"}
# A1111 sampler names (and their Karras variants) to sdrt's.
A1111_SAMPLERS = {name.lower(): key for key, name in SAMPLER_NAMES.items()}
MAX_SEED = 2**32 - 1
POLL_S = 0.05


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


class RequestError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


class GenerationCancelled(Exception):
    """Raised inside a generation whose request timed out or disconnected."""


def error_body(message: str, param: str | None, kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


# ---------------------------------------------------------------- request bodies
class OpenAIImageRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    prompt: StrictStr
    n: int = Field(1, ge=1)
    size: StrictStr | None = None
    response_format: StrictStr = "b64_json"
    model: StrictStr | None = None
    negative_prompt: StrictStr | None = None
    steps: int = Field(30, ge=1)
    guidance_scale: float = Field(7.5, ge=0)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    scheduler: StrictStr = "lms"


class A1111Txt2ImgRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
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


class A1111Img2ImgRequest(A1111Txt2ImgRequest):
    init_images: list[StrictStr] = Field(min_length=1)
    denoising_strength: float = Field(0.75, gt=0, le=1)
    mask: StrictStr | None = None


# ---------------------------------------------------------------- the service
class Service:
    """Admission, batching and execution. Admitted requests wait in `pending`; each of
    `concurrency` workers takes the oldest one plus the compatible requests behind it (see
    sdrt.serve.batching) and runs them as one generate() call in a thread. A batch stops at its
    next denoising step once every request in it has timed out or disconnected."""

    def __init__(self, pipeline, settings: ServeSettings):
        self.pipeline = pipeline
        self.settings = settings
        self.metrics = Metrics()
        self._admitted = 0
        self._admit_lock = threading.Lock()
        self._pending: list[Job] = []
        self._wakeup: asyncio.Event | None = None
        self._workers: list[asyncio.Task] = []
        batch_range = pipeline.manifest.dims.get("batch")
        self.max_batch_images = min(settings.max_batch_images, batch_range.max if batch_range else 1)

    def _start_workers(self) -> asyncio.Event:
        if self._wakeup is None:  # created inside the server's event loop
            self._wakeup = asyncio.Event()
            self._workers = [asyncio.ensure_future(self._worker()) for _ in range(self.settings.concurrency)]
        return self._wakeup

    async def generate(self, request: Request, **kwargs) -> Any:
        settings = self.settings
        with self._admit_lock:
            if self._admitted >= settings.max_queue:
                raise RequestError(503, f"the service is busy ({settings.max_queue} requests queued); retry later")
            self._admitted += 1
            self.metrics.queue_length = self._admitted
        arrived = time.monotonic()
        deadline = arrived + settings.timeout_s
        try:
            if kwargs.get("seed") is None:  # drawn here so that a batch can report each request's seed
                kwargs["seed"] = random.SystemRandom().randint(0, MAX_SEED)
            m = self.pipeline.manifest
            job = Job(kwargs, batch_key(kwargs, m.native_height, m.native_width),
                      asyncio.get_running_loop().create_future())
            self._pending.append(job)
            self._start_workers().set()
            try:
                while not job.future.done():
                    await asyncio.wait({job.future}, timeout=POLL_S)
                    if not job.future.done():
                        await self._check_alive(request, deadline)
            except RequestError:
                await self._abandon(job, wait=True)
                raise
            except BaseException:  # cancelled by the server (shutdown, or Ray Serve on disconnect)
                await self._abandon(job, wait=False)
                raise
            outcome = job.future.result()
            self.metrics.observe("request", time.monotonic() - arrived)
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome
        finally:
            with self._admit_lock:
                self._admitted -= 1
                self.metrics.queue_length = self._admitted

    async def _abandon(self, job: Job, wait: bool) -> None:
        """Marks a job cancelled. A job still pending leaves the queue; one running in a batch
        whose every request is now cancelled is waited for (one step), so its slot is free when
        the answer goes out."""
        job.cancel.set()
        if job in self._pending:
            self._pending.remove(job)
        elif wait and job.started and all(other.cancel.is_set() for other in job.batch):
            await asyncio.wait({job.future})

    async def _check_alive(self, request: Request, deadline: float) -> None:
        if time.monotonic() > deadline:
            raise RequestError(504, f"the request took longer than {self.settings.timeout_s:g} s")
        if await request.is_disconnected():
            raise RequestError(499, "the client disconnected")

    async def _worker(self) -> None:
        assert self._wakeup is not None
        while True:
            batch = take_batch(self._pending, self.max_batch_images)
            if not batch:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self.settings.batch_window_s > 0 and batch[0].key is not None:
                await asyncio.sleep(self.settings.batch_window_s)  # let simultaneous requests join
                take_compatible(self._pending, batch, self.max_batch_images)
            self.metrics.in_flight += len(batch)
            self.metrics.observe_batch(len(batch))
            try:
                outcomes = await asyncio.to_thread(self._run, batch)
            except BaseException as error:  # noqa: BLE001 - answered to the requests, never lost
                outcomes = [error] * len(batch)
            finally:
                self.metrics.in_flight -= len(batch)
            for job, outcome in zip(batch, outcomes):
                if not job.future.done():
                    job.future.set_result(outcome)

    def _run(self, batch: list[Job]) -> list[Any]:
        """Outcomes for a batch: GenerationResult, None (cancelled) or the exception. A batch
        whose call fails on a request's own settings is retried one request at a time, so one
        bad request never fails the others."""

        def progress(step: int, total: int) -> None:
            if all(job.cancel.is_set() for job in batch):
                raise GenerationCancelled()

        try:
            if len(batch) == 1:
                results = [self.pipeline.generate(progress=progress, **batch[0].kwargs)]
            else:
                results = split_result(self.pipeline.generate(progress=progress, **merged_kwargs(batch)), batch)
        except GenerationCancelled:
            return [None] * len(batch)
        except SdrtError as error:
            if len(batch) == 1:
                return [error]
            return [self._run([job])[0] for job in batch]
        for stage in ("text_encoder", "denoise", "vae_decoder", "total"):
            if stage in results[0].timings:
                self.metrics.observe(stage, results[0].timings[stage])
        return results


# ---------------------------------------------------------------- helpers
def png_base64(image: Image.Image, parameters_text: str | None = None) -> str:
    from PIL import PngImagePlugin

    buffer = io.BytesIO()
    info = None
    if parameters_text is not None:
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", parameters_text)
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_image(data: str, param: str) -> Image.Image:
    if data.startswith("data:"):
        data = data.split(",", 1)[-1]
    try:
        raw = base64.b64decode(data, validate=True)
        with Image.open(io.BytesIO(raw)) as image:
            image.load()
            return image.copy()
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError):
        raise RequestError(400, f"{param} is not a base64-encoded image", param) from None


def parse_size(size: str | None) -> tuple[int | None, int | None]:
    if size is None:
        return None, None
    width, sep, height = size.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise RequestError(400, f"size must be WIDTHxHEIGHT, got {size!r}", "size")
    return int(width), int(height)


def sdrt_scheduler(sampler: str | None, scheduler: str | None) -> str:
    if sampler is None:
        return "lms"
    name = sampler.lower()
    if scheduler and scheduler.lower() == "karras" and not name.endswith("karras"):
        name += " karras"
    if name in SCHEDULERS:
        return name
    if name not in A1111_SAMPLERS:
        raise RequestError(400, f"unknown sampler {sampler!r}; choose one of "
                                f"{', '.join(SAMPLER_NAMES.values())}", "sampler_name")
    return A1111_SAMPLERS[name]


PARAM_OF_MESSAGE = {"height": "height", "width": "width", "steps": "steps", "guidance": "guidance_scale",
                    "seed": "seed", "strength": "denoising_strength", "the mask": "mask", "input image": "init_images",
                    "unknown scheduler": "scheduler", "prompt": "prompt", "num_images": "n"}


def param_of(error: SdrtError) -> str | None:
    message = str(error)
    for prefix, param in PARAM_OF_MESSAGE.items():
        if message.startswith(prefix) or f" {prefix} " in message[:40]:
            return param
    return None


async def send_json(send, status: int, payload: dict, headers: list | None = None) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware, outermost: the bearer-token check (all routes but /health) and the
    request count by route and status. Plain ASGI, so disconnects reach the endpoints."""

    def __init__(self, app, service: "Service", api_key: str | None):
        self.app, self.service, self.api_key = app, service, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"]
        if self.api_key and route not in OPEN_ROUTES:
            headers = dict(scope.get("headers", []))
            if headers.get(b"authorization", b"").decode("latin-1") != f"Bearer {self.api_key}":
                self.service.metrics.count_request(route, 401)
                await send_json(send, 401, error_body("a valid bearer token is required", None,
                                                      "authentication_error"))
                return
        status = 500

        async def counting_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # Which process answered: with several replicas, where a request went.
                message = {**message, "headers": [*message.get("headers", []), (b"x-sdrt-process", str(os.getpid()).encode())]}
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.service.metrics.count_request(route, status)


class BodyLimit:
    """ASGI middleware: reads the body up to `limit` bytes (whether or not Content-Length is
    sent) and answers 413 itself past that; otherwise replays it to the app. Later receives
    (disconnect checks) go to the real channel."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        buffered, size = [], 0
        while True:
            message = await receive()
            buffered.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.limit:
                await send_json(send, 413, error_body(f"the body is larger than {self.limit} bytes", None))
                return
            if not message.get("more_body", False):
                break

        async def replay():
            return buffered.pop(0) if buffered else await receive()

        await self.app(scope, replay, send)


# ---------------------------------------------------------------- the app
def create_app(pipeline, settings: ServeSettings | None = None) -> FastAPI:
    settings = settings or ServeSettings(api_key=os.environ.get(API_KEY_ENV) or None)
    service = Service(pipeline, settings)
    app = FastAPI(title="sdrt", docs_url=None, redoc_url=None)
    app.state.service = service

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        return JSONResponse(error_body(str(error.detail), None), status_code=error.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        first = error.errors()[0] if error.errors() else {}
        location = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = ".".join(location) or None
        message = f"{param}: {first.get('msg', 'invalid value')}" if param else "the body is not valid JSON"
        return JSONResponse(error_body(message, param), status_code=400)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, error: RequestError):
        headers = {"Retry-After": str(settings.retry_after_s)} if error.status == 503 else None
        kind = "server_busy" if error.status == 503 else "invalid_request_error"
        return JSONResponse(error_body(error.message, error.param, kind), status_code=error.status, headers=headers)

    @app.exception_handler(SdrtError)
    async def generation_error(request: Request, error: SdrtError):
        return JSONResponse(error_body(str(error), param_of(error)), status_code=400)

    def check_limits(count: int, steps: int, count_param: str) -> None:
        if count > settings.max_images:
            raise RequestError(400, f"{count_param} must be at most {settings.max_images}", count_param)
        if steps > settings.max_steps:
            raise RequestError(400, f"steps must be at most {settings.max_steps}", "steps")

    async def run(request: Request, **kwargs):
        result = await service.generate(request, **kwargs)
        if result is None:
            raise RequestError(499, "the client disconnected")
        return result

    @app.get("/health")
    async def health():
        m = pipeline.manifest
        return {"status": "ok", "model": pipeline.folder.name, "backend": pipeline.backend, "process": os.getpid(),
                "queue_length": service.metrics.queue_length, "native_size": [m.native_width, m.native_height]}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(service.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/images/generations")
    async def openai_generations(body: OpenAIImageRequest, request: Request):
        if body.response_format != "b64_json":
            raise RequestError(400, "only response_format b64_json is supported", "response_format")
        width, height = parse_size(body.size)
        check_limits(body.n, body.steps, "n")
        result = await run(request, prompt=body.prompt, negative_prompt=body.negative_prompt, steps=body.steps,
                           guidance_scale=body.guidance_scale, height=height, width=width, seed=body.seed,
                           num_images=body.n, scheduler=body.scheduler)
        return {"created": int(time.time()),
                "data": [{"b64_json": png_base64(image), "revised_prompt": body.prompt} for image in result.images]}

    async def a1111(body: A1111Txt2ImgRequest, request: Request, image=None, mask=None, strength=None):
        scheduler = sdrt_scheduler(body.sampler_name or body.sampler_index, body.scheduler)
        check_limits(body.batch_size * body.n_iter, body.steps, "batch_size")
        seed = None if body.seed == -1 else body.seed
        images, texts, seeds, parameters = [], [], [], None
        for iteration in range(body.n_iter):
            run_seed = None if seed is None else (seed + iteration * body.batch_size) % (MAX_SEED + 1)
            result = await run(request, prompt=body.prompt, negative_prompt=body.negative_prompt or None,
                               steps=body.steps, guidance_scale=body.cfg_scale, height=body.height,
                               width=body.width, seed=run_seed, num_images=body.batch_size, scheduler=scheduler,
                               init_image=image, mask_image=mask, strength=strength)
            parameters = result.parameters
            for position, picture in enumerate(result.images, start=1):
                text = format_parameters(body.prompt, result.parameters,
                                         position if body.batch_size > 1 else None)
                images.append(png_base64(picture, text))
                texts.append(text)
                seeds.append(result.parameters["seed"])
        info = {"prompt": body.prompt, "negative_prompt": body.negative_prompt, "seed": seeds[0], "all_seeds": seeds,
                "width": parameters["width"], "height": parameters["height"],
                "sampler_name": SAMPLER_NAMES.get(scheduler, scheduler), "cfg_scale": body.cfg_scale,
                "steps": body.steps, "batch_size": body.batch_size, "infotexts": texts}
        if strength is not None:
            info["denoising_strength"] = strength
        return {"images": images, "parameters": body.model_dump(exclude={"init_images", "mask"}),
                "info": json.dumps(info)}

    @app.post("/sdapi/v1/txt2img")
    async def txt2img(body: A1111Txt2ImgRequest, request: Request):
        return await a1111(body, request)

    @app.post("/sdapi/v1/img2img")
    async def img2img(body: A1111Img2ImgRequest, request: Request):
        image = decode_image(body.init_images[0], "init_images")
        mask = decode_image(body.mask, "mask") if body.mask else None
        return await a1111(body, request, image=image, mask=mask, strength=body.denoising_strength)

    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(Guard, service=service, api_key=settings.api_key)  # added last: outermost
    return app
