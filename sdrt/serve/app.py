"""The ASGI app: OpenAI Images API, AUTOMATIC1111's txt2img/img2img, /health, /metrics.

One `Pipeline` is loaded once and shared. Each route turns its body into a GenerationRequest
and hands it to the Service (sdrt.serve.service: queue, limits, batching, cancellation); a
request error names the API's own field (sdrt.serve.a1111's field maps).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from sdrt.errors import SdrtError
from sdrt.runtime.engines.ort_cache import cache_root
from sdrt.runtime.imaging.png_info import format_parameters
from sdrt.runtime.request import GenerationRequest
from sdrt.runtime.schedulers import DIFFUSION, display_name
from sdrt.runtime.schedulers.schedules import schedule_label
from sdrt.runtime.seeds import consecutive_seeds, draw_seed
from sdrt.runtime.text.prompts.styles import apply_styles, load_styles
from sdrt.serve.a1111 import (
    A1111_DEFAULT_SAMPLER,
    A1111_FIELDS,
    OPENAI_FIELDS,
    a1111_hires,
    a1111_mask_options,
    a1111_sampler_settings,
    a1111_vae,
    check_eta,
    check_lora_tags,
    control_units,
    decode_image,
    deepcache_field,
    family_mask_options,
    k_family_applies,
    png_base64,
    refiner_switch,
    sdrt_sampler,
    step_cache_field,
)
from sdrt.serve.a1111_noise_fields import a1111_noise, a1111_variation_info
from sdrt.serve.a1111_options import MODEL_OPTION, A1111Options
from sdrt.serve.a1111_routes import add_a1111_routes
from sdrt.serve.a1111_schemas import A1111Img2ImgRequest, A1111Txt2ImgRequest
from sdrt.serve.catalog import ModelCatalog
from sdrt.serve.comfy.routes import add_comfy_routes
from sdrt.serve.family_guidance import a1111_guidance, a1111_references, edits_reference, served_family, served_manifest
from sdrt.serve.middleware import BodyLimit, Guard
from sdrt.serve.openai_routes import add_openai_routes
from sdrt.serve.playground import add_playground
from sdrt.serve.schemas import (
    API_KEY_ENV,
    RequestError,
    ServeSettings,
    error_body,
)
from sdrt.serve.service import A1111_API, Service, Stopped

__all__ = ["ServeSettings", "create_app"]


def create_app(pipeline, settings: ServeSettings | None = None, catalog: ModelCatalog | None = None) -> FastAPI:
    """`catalog`: the models A1111's sd_model_checkpoint and OpenAI's `model` may switch to
    (default: only `pipeline`, which then cannot be reloaded)."""
    settings = settings or ServeSettings(api_key=os.environ.get(API_KEY_ENV) or None)
    catalog = catalog or ModelCatalog(pipeline.folder, None, lambda folder: pipeline)
    service = Service(pipeline, settings, catalog.load)
    docs = settings.docs  # behind the same auth as every route (Guard): only /health is open
    app = FastAPI(
        title="sdrt",
        docs_url="/docs" if docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.service = service
    app.state.options = A1111Options(randn_source=settings.randn_source)
    app.state.styles = load_styles(settings.styles_file) if settings.styles_file else {}

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        return JSONResponse(error_body(str(error.detail), None), status_code=error.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        first = error.errors()[0] if error.errors() else {}
        if first.get("type") == "json_invalid":
            return JSONResponse(error_body("the body is not valid JSON", None), status_code=400)
        location = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = ".".join(location) or None
        message = f"{param}: {first.get('msg', 'invalid value')}" if param else "the body is not valid JSON"
        return JSONResponse(error_body(message, param), status_code=400)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, error: RequestError):
        headers = {"Retry-After": str(settings.retry_after_s)} if error.status == 503 else None
        kind = {503: "server_busy", 501: "not_implemented"}.get(error.status, "invalid_request_error")
        return JSONResponse(error_body(error.message, error.param, kind), status_code=error.status, headers=headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):  # a defect: still JSON, with no internals
        return JSONResponse(
            error_body(f"internal error ({type(error).__name__})", None, "server_error"), status_code=500
        )

    @app.exception_handler(Stopped)
    async def stopped(request: Request, error: Stopped):
        return JSONResponse(
            error_body(f"the generation was stopped ({error.kind})", None, "server_busy"), status_code=503
        )

    @app.exception_handler(SdrtError)
    async def generation_error(request: Request, error: SdrtError):
        param = getattr(error, "param", None)
        fields = A1111_FIELDS if request.url.path.startswith("/sdapi/") else OPENAI_FIELDS
        return JSONResponse(error_body(str(error), fields.get(param, param)), status_code=400)

    def check_limits(count: int, steps: int, count_param: str) -> None:
        if count > settings.max_images:
            raise RequestError(
                400, f"{count_param} must be at most {settings.max_images} (the server's --max-images)", count_param
            )
        if steps > settings.max_steps:
            raise RequestError(400, f"steps must be at most {settings.max_steps} (the server's --max-steps)", "steps")

    def check_a1111_limits(body) -> None:
        """A1111 makes batch_size x n_iter images per request: --max-images counts them all, and
        the refusal names the field that took the count past it."""
        check_limits(body.batch_size, body.steps, "batch_size")
        total = body.batch_size * body.n_iter
        if total > settings.max_images:
            raise RequestError(
                400,
                f"n_iter: batch_size {body.batch_size} x n_iter {body.n_iter} is {total} images; "
                f"at most {settings.max_images} per request (the server's --max-images)",
                "n_iter",
            )

    def check_hires_steps(generation: GenerationRequest, param: str) -> None:
        """The hires fix's second pass counts against --max-steps as the first pass does."""
        hires = generation.hires
        if hires is not None and isinstance(hires.steps, int) and hires.steps > settings.max_steps:
            raise RequestError(400, f"{param} must be at most {settings.max_steps} (the server's --max-steps)", param)

    async def run(request: Request, generation: GenerationRequest, model=None, api=None):
        result = await service.generate(request, generation, model, api)
        if result is None:
            raise RequestError(499, "the client disconnected")
        return result

    add_playground(app)
    comfy_root = Path(settings.comfy_dir) if settings.comfy_dir else cache_root() / "comfy"
    app.state.comfy = add_comfy_routes(
        app, service, catalog, settings, {kind: comfy_root / kind for kind in ("input", "output", "temp")}
    )

    @app.get("/health")
    async def health():
        m = service.pipeline.manifest
        return {
            "status": "ok",
            "model": service.pipeline.folder.name,
            "backend": service.pipeline.backend.name,
            "process": os.getpid(),
            "queue_length": service.metrics.queue_length,
            "native_size": [m.native_width, m.native_height],
        }

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(service.metrics.render(), media_type="text/plain; version=0.0.4")

    def a1111_request(body: A1111Txt2ImgRequest, image, mask, strength, mask_options):
        """The request's GenerationRequest, its warnings and its model's folder (None: the
        default). Styles, LoRA tags and images are read here, in a worker thread: however
        large a request is, the event loop (and every other client) never waits on it."""
        warnings = body.checked()
        checkpoint = body.override_settings.get(MODEL_OPTION)
        model = None if checkpoint is None else catalog.named(checkpoint, f"override_settings.{MODEL_OPTION}").folder
        named = body.sampler_name or body.sampler_index
        if named is None and served_manifest(service.pipeline, model).sampler_space == DIFFUSION:
            named = A1111_DEFAULT_SAMPLER  # flow models keep their family's own default
        sampler, schedule = sdrt_sampler(named, body.scheduler, k_family_applies(body, image))
        eta = check_eta(sampler, body.eta)
        check_a1111_limits(body)
        switch = refiner_switch(service.pipeline, body.refiner_checkpoint, body.refiner_switch_at)
        options = app.state.options.changed(body.override_settings, "override_settings")  # this request's only
        prompt, negative = apply_styles(body.prompt, body.negative_prompt, body.styles or (), app.state.styles)
        check_lora_tags(prompt, "prompt")
        image = None if image is None else decode_image(image, "init_images")
        mask = None if mask is None else decode_image(mask, "mask")
        guidance, true_cfg = a1111_guidance(
            served_manifest(service.pipeline, model), body.cfg_scale, body.distilled_cfg_scale, negative
        )
        if image is not None and edits_reference(service.pipeline, model):
            strength = None  # FLUX.1 Kontext edits its reference whole; A1111 clients send a strength always
        references, image, strength = a1111_references(served_family(service.pipeline, model), body, image, strength)
        mask_options = family_mask_options(served_family(service.pipeline, model), mask_options, warnings)
        generation = GenerationRequest(
            prompt,
            negative_prompt=negative or None,
            steps=body.steps,
            guidance_scale=guidance,
            true_cfg_scale=true_cfg,
            height=body.height,
            width=body.width,
            seed=None if body.seed == -1 else body.seed,
            num_images=body.batch_size,
            sampler=sampler,
            schedule=schedule,
            init_image=image,
            reference_images=references,
            mask_image=mask,
            mask_options=mask_options,
            strength=strength,
            refiner_switch=switch,
            clip_skip=options.clip_skip,
            emphasis=options.emphasis,
            controlnets=control_units(body, image),
            vae=a1111_vae(options.sd_vae, "override_settings.sd_vae"),
            hires=a1111_hires(body) if image is None else None,
            deepcache=deepcache_field(body.deepcache),
            cache=step_cache_field(body.cache),
            eta=eta,
            img2img_fix_steps=options.img2img_fix_steps,
            discard_penultimate_sigma=options.always_discard_next_to_last_sigma,
            sampler_settings=a1111_sampler_settings(sampler, body.eta, options.sampler),
            a1111_noise=a1111_noise(body, options),
            **body.sd3_settings(),
            **body.kontext_settings(),
        )
        check_hires_steps(generation, "hr_second_pass_steps")
        return generation, warnings, model

    async def a1111(
        body: A1111Txt2ImgRequest, request: Request, image=None, mask=None, strength=None, mask_options=None
    ):
        """An A1111 generation: on the model its override_settings name, for this request only
        (A1111's override_settings_restore_afterwards; the server's default changes only by
        POST /sdapi/v1/options)."""
        base, warnings, model = await run_in_threadpool(a1111_request, body, image, mask, strength, mask_options)
        return await a1111_iterations(body, request, base, warnings, model)

    async def a1111_iterations(body, request, base: GenerationRequest, warnings: list[str], model):
        """The request's `n_iter` image sets (the seed moving on by `batch_size` each), and A1111's answer."""
        seed, hires, prompt = base.seed, base.hires, base.prompt
        seed = draw_seed() if seed is None else seed  # image k of the request gets seed + k, as in A1111
        images, texts, seeds, parameters, stopped = [], [], [], None, None
        noise, subseed = base.a1111_noise, None
        if noise is not None and noise.subseed_strength:  # A1111: one seed, consecutive variation seeds
            subseed = draw_seed() if body.subseed in (None, -1) else body.subseed
        for iteration in range(body.n_iter):
            run_seeds = consecutive_seeds(seed + iteration * body.batch_size, body.batch_size)
            job = base
            if subseed is not None:
                run_seeds = [seed] * body.batch_size
                subseeds = consecutive_seeds(subseed + iteration * body.batch_size, body.batch_size)
                job = replace(base, a1111_noise=replace(noise, subseeds=tuple(subseeds)))
            try:
                result = await run(request, replace(job, seed=None, seeds=run_seeds), model, A1111_API)
            except Stopped as stop:  # A1111's /skip drops this image set, /interrupt the rest too
                if stop.kind not in ("interrupt", "skip"):
                    raise
                stopped = stop.kind
                if stop.partial is None:
                    if stop.kind == "interrupt":
                        break
                    continue
                result = stop.partial  # interrupted: its images so far, as A1111 answers
            parameters = result.parameters
            for position, picture in enumerate(result.images, start=1):
                text = format_parameters(prompt, result.parameters, position if body.batch_size > 1 else None)
                images.append(png_base64(picture, text))
                texts.append(text)
                seeds.append((result.parameters.get("seeds") or [result.parameters["seed"]])[position - 1])
            warnings += result.warnings
            if stopped == "interrupt":
                break
        info = {
            "prompt": prompt,
            "negative_prompt": base.negative_prompt or "",
            "styles": body.styles or [],
            "seed": seeds[0] if seeds else seed,
            "all_seeds": seeds,
            **a1111_variation_info(base.a1111_noise, subseed, len(seeds)),
            "sampler_name": display_name(base.sampler),
            "scheduler": schedule_label(base.schedule),
            "cfg_scale": body.cfg_scale,
            "steps": body.steps,
            "batch_size": body.batch_size,
            "clip_skip": base.clip_skip,
            "infotexts": texts,
            "warnings": warnings,
            "sd_model_name": (model or service.pipeline.folder).name,
        }
        if parameters is not None:
            info.update(width=parameters["width"], height=parameters["height"])
        if stopped is not None:
            info["interrupted" if stopped == "interrupt" else "skipped"] = True
        if base.strength is not None or hires is not None:
            info["denoising_strength"] = base.strength if hires is None else hires.strength
        if hires is not None and parameters is not None:
            info.update(
                enable_hr=True,
                hr_upscaler=hires.upscaler,
                hr_width=parameters["hires"]["width"],
                hr_height=parameters["hires"]["height"],
            )
        if base.refiner_switch is not None and parameters is not None:
            info.update(refiner_checkpoint=parameters["refiner"], refiner_switch_at=base.refiner_switch)
        return {
            "images": images if body.send_images else [],
            "parameters": body.model_dump(exclude={"init_images", "mask"}),
            "info": json.dumps(info),
        }

    @app.post("/sdapi/v1/txt2img")
    async def txt2img(body: A1111Txt2ImgRequest, request: Request):
        return await a1111(body, request)

    @app.post("/sdapi/v1/img2img")
    async def img2img(body: A1111Img2ImgRequest, request: Request):
        mask = body.mask or None
        return await a1111(
            body,
            request,
            image=body.init_images[0],
            mask=mask,
            strength=body.denoising_strength,
            mask_options=a1111_mask_options(body) if mask else None,
        )

    add_a1111_routes(app, service, catalog, settings)
    add_openai_routes(app, service, catalog, settings, run, (check_limits, check_hires_steps))
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    app.add_middleware(
        Guard, service=service, api_key=settings.api_key, api_auth=settings.api_auth, routes=app.router.routes
    )  # outermost
    return app
