"""The ASGI app: OpenAI Images API, AUTOMATIC1111's txt2img/img2img, /health, /metrics.

One `Pipeline` is loaded once and shared. Each route turns its body into a GenerationRequest
and hands it to the Service (sdrt.serve.service: queue, limits, batching, cancellation); a
request error names the API's own field (sdrt.serve.a1111's field maps).
"""

from __future__ import annotations

import json
import os
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sdrt.errors import SdrtError
from sdrt.runtime.png_info import format_parameters
from sdrt.runtime.request import MAX_SEED, GenerationRequest
from sdrt.runtime.schedulers import DEFAULT_SAMPLER, display_name
from sdrt.runtime.sizes import SizeError, parse_size
from sdrt.serve.a1111 import (A1111_FIELDS, OPENAI_FIELDS, a1111_vae, check_lora_tags, control_units, decode_image, png_base64,
                              refiner_switch, sdrt_sampler, served_name)
from sdrt.runtime.controlnet.units import ControlUnit
from sdrt.serve.middleware import BodyLimit, Guard
from sdrt.serve.schemas import (
    API_KEY_ENV,
    A1111Img2ImgRequest,
    A1111Txt2ImgRequest,
    OpenAIImageRequest,
    RequestError,
    ServeSettings,
    error_body,
)
from sdrt.serve.service import Service

__all__ = ["ServeSettings", "create_app"]


def create_app(pipeline, settings: ServeSettings | None = None) -> FastAPI:
    settings = settings or ServeSettings(api_key=os.environ.get(API_KEY_ENV) or None)
    service = Service(pipeline, settings)
    app = FastAPI(title="sdrt", docs_url=None, redoc_url=None, openapi_url=None)
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

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):  # a defect: still JSON, with no internals
        return JSONResponse(error_body(f"internal error ({type(error).__name__})", None, "server_error"),
                            status_code=500)

    @app.exception_handler(SdrtError)
    async def generation_error(request: Request, error: SdrtError):
        param = getattr(error, "param", None)
        fields = A1111_FIELDS if request.url.path.startswith("/sdapi/") else OPENAI_FIELDS
        return JSONResponse(error_body(str(error), fields.get(param, param)), status_code=400)

    def check_limits(count: int, steps: int, count_param: str) -> None:
        if count > settings.max_images:
            raise RequestError(400, f"{count_param} must be at most {settings.max_images}", count_param)
        if steps > settings.max_steps:
            raise RequestError(400, f"steps must be at most {settings.max_steps}", "steps")

    async def run(request: Request, generation: GenerationRequest):
        result = await service.generate(request, generation)
        if result is None:
            raise RequestError(499, "the client disconnected")
        return result

    @app.get("/health")
    async def health():
        m = pipeline.manifest
        return {"status": "ok", "model": pipeline.folder.name, "backend": pipeline.backend.name, "process": os.getpid(),
                "queue_length": service.metrics.queue_length, "native_size": [m.native_width, m.native_height]}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(service.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/images/generations")
    async def openai_generations(body: OpenAIImageRequest, request: Request):
        if body.response_format != "b64_json":
            raise RequestError(400, "only response_format b64_json is supported", "response_format")
        height = width = None
        if body.size is not None:
            try:
                height, width = parse_size(body.size, "size")
            except SizeError as error:
                raise RequestError(400, str(error), "size") from None
        check_limits(body.n, body.steps, "n")
        sampler = body.sampler or body.scheduler or DEFAULT_SAMPLER
        if not settings.plain_prompts:
            check_lora_tags(body.prompt, "prompt")
        units = [ControlUnit(served_name(c.model, f"controlnets[{index}].model"),
                             decode_image(c.image, f"controlnets[{index}].image"), c.scale, c.start, c.end, c.mode,
                             c.preprocessor) for index, c in enumerate(body.controlnets)]
        result = await run(request, GenerationRequest(
            body.prompt, negative_prompt=body.negative_prompt, steps=body.steps, guidance_scale=body.guidance_scale,
            height=height, width=width, seed=body.seed, num_images=body.n, sampler=sampler,
            plain_prompt=settings.plain_prompts, controlnets=units, vae=body.vae))
        return {"created": int(time.time()),
                "data": [{"b64_json": png_base64(image), "revised_prompt": body.prompt} for image in result.images]}

    async def a1111(body: A1111Txt2ImgRequest, request: Request, image=None, mask=None, strength=None):
        sampler = sdrt_sampler(body.sampler_name or body.sampler_index, body.scheduler)
        check_limits(body.batch_size * body.n_iter, body.steps, "batch_size")
        seed = None if body.seed == -1 else body.seed
        switch = refiner_switch(pipeline, body.refiner_checkpoint, body.refiner_switch_at)
        overrides = body.override_settings
        check_lora_tags(body.prompt, "prompt")
        units = control_units(body, image)
        images, texts, seeds, parameters = [], [], [], None
        for iteration in range(body.n_iter):
            run_seed = None if seed is None else (seed + iteration * body.batch_size) % (MAX_SEED + 1)
            result = await run(request, GenerationRequest(
                body.prompt, negative_prompt=body.negative_prompt or None, steps=body.steps,
                guidance_scale=body.cfg_scale, height=body.height, width=body.width, seed=run_seed,
                num_images=body.batch_size, sampler=sampler, init_image=image, mask_image=mask, strength=strength,
                refiner_switch=switch, clip_skip=overrides.CLIP_stop_at_last_layers, emphasis=overrides.emphasis,
                controlnets=units, vae=a1111_vae(overrides.sd_vae)))
            parameters = result.parameters
            for position, picture in enumerate(result.images, start=1):
                text = format_parameters(body.prompt, result.parameters,
                                         position if body.batch_size > 1 else None)
                images.append(png_base64(picture, text))
                texts.append(text)
                seeds.append(result.parameters["seed"])
        info = {"prompt": body.prompt, "negative_prompt": body.negative_prompt, "seed": seeds[0], "all_seeds": seeds,
                "width": parameters["width"], "height": parameters["height"],
                "sampler_name": display_name(sampler), "cfg_scale": body.cfg_scale,
                "steps": body.steps, "batch_size": body.batch_size, "clip_skip": overrides.CLIP_stop_at_last_layers,
                "infotexts": texts}
        if strength is not None:
            info["denoising_strength"] = strength
        if switch is not None:
            info.update(refiner_checkpoint=parameters["refiner"], refiner_switch_at=switch)
        return {"images": images, "parameters": body.model_dump(exclude={"init_images", "mask"}),
                "info": json.dumps(info)}

    @app.get("/sdapi/v1/embeddings")
    async def embeddings():
        """A1111's listing: the loaded textual-inversion embeddings, and those skipped with why."""
        found = pipeline.text_encoders.embeddings
        loaded = {e.name: {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                           "shape": int(next(iter(e.vectors.values())).shape[1]), "vectors": e.count}
                  for e in found.loaded}
        skipped = {name: {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": None,
                          "vectors": None, "reason": reason} for name, reason in found.skipped.items()}
        return {"loaded": loaded, "skipped": skipped}

    @app.get("/sdapi/v1/loras")
    async def loras():
        """A1111's listing: the LoRAs of --lora-dir that <lora:NAME:WEIGHT> tags can name."""
        from sdrt.runtime.safetensors_files import SafetensorsError, read_metadata

        listed = []
        for name, path in pipeline.loras.library.names().items():
            try:
                metadata = read_metadata(path) if path.suffix.lower() == ".safetensors" else {}
            except (SafetensorsError, OSError):
                metadata = {}
            listed.append({"name": name, "alias": name, "path": str(path), "metadata": metadata})
        return listed

    @app.post("/sdapi/v1/refresh-loras")
    async def refresh_loras():
        """The folder is read at every request; nothing to refresh (A1111 clients call it)."""
        return None

    @app.get("/sdapi/v1/progress")
    async def progress(skip_current_image: bool = False):
        """A1111's progress of the running generation (current_image: with --preview-every)."""
        return service.progress.report(service.admitted, skip_current_image, png_base64)

    @app.get("/controlnet/model_list")
    async def controlnet_models():
        """The A1111 ControlNet extension's listing: the exported ControlNets of --controlnet-dir."""
        return {"model_list": list(pipeline.controlnets.names())}

    @app.get("/controlnet/module_list")
    async def controlnet_modules():
        from sdrt.runtime.controlnet.preprocess import PREPROCESSORS

        return {"module_list": list(PREPROCESSORS)}

    @app.post("/sdapi/v1/txt2img")
    async def txt2img(body: A1111Txt2ImgRequest, request: Request):
        return await a1111(body, request)

    @app.post("/sdapi/v1/img2img")
    async def img2img(body: A1111Img2ImgRequest, request: Request):
        image = decode_image(body.init_images[0], "init_images")
        mask = decode_image(body.mask, "mask") if body.mask else None
        return await a1111(body, request, image=image, mask=mask, strength=body.denoising_strength)

    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(Guard, service=service, api_key=settings.api_key, routes=app.router.routes)  # outermost
    return app
