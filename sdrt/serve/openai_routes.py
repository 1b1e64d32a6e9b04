"""The OpenAI Images API: generations (JSON), edits and variations (multipart forms, as the
official client sends them), and the served models. Every PNG carries A1111's `parameters`
chunk, and each data item says its seed (`seed`, an extension field, as `sdrt.parameters`).

Edits: the mask's transparent pixels (alpha 0) are the ones to repaint, as in OpenAI's API; with
no mask, the image's own transparent pixels are; an image with no transparency and no mask is
an image-to-image edit. On a FLUX.1 Kontext model an edit is Kontext's: the image is the
reference, whole (no mask, no strength). Variations: image-to-image from the image with an empty prompt (or the
`prompt` extension field). `size` "auto" (or none) is the model's native size for generations
and the input's size for edits and variations."""

from __future__ import annotations

import base64
import time

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from sdrt.runtime.features.controlnet.units import ControlUnit
from sdrt.runtime.imaging.png_info import format_parameters
from sdrt.runtime.request import GenerationRequest
from sdrt.runtime.schedulers import DEFAULT_SAMPLER, SAMPLER_NAMES, SAMPLERS
from sdrt.runtime.seeds import seeds_for
from sdrt.runtime.text.prompts.styles import apply_styles
from sdrt.serve.a1111 import (
    check_lora_tags,
    decode_image,
    deepcache_field,
    png_base64,
    served_name,
    step_cache_field,
)
from sdrt.serve.family_guidance import edits_reference, openai_guidance, served_family, served_manifest
from sdrt.serve.openai_compat import (
    URL,
    WARNINGS_HEADER,
    ImageStore,
    is_openai_model,
    response_format_of,
    steps_of,
    style_of,
)
from sdrt.serve.openai_forms import (
    EDIT_STRENGTH,
    VARIATION_STRENGTH,
    edit_images,
    form_body,
    hires_of,
    parse_openai_size,
    png_bytes,
    read_form,
)
from sdrt.serve.schemas import OpenAIImageRequest, RequestError


def add_openai_routes(app: FastAPI, service, catalog, settings, run, checks) -> None:
    """`checks`: the app's (check_limits, check_hires_steps)."""
    check_limits, check_hires_steps = checks
    store = ImageStore(settings.image_url_ttl_s, settings.max_url_images)

    def guidance_of(body: OpenAIImageRequest, model) -> float:
        """guidance_scale, or the served family's default when the client sent none."""
        given = "guidance_scale" in body.model_fields_set
        return openai_guidance(served_manifest(service.pipeline, model), body.guidance_scale, given)

    def check_model(name: str | None):
        """The folder of the model a request names (None: the server's default), for this
        request alone: another client's requests are not affected."""
        if name is None:
            return None
        model = catalog.find(name)
        if model is None and is_openai_model(name):
            return None  # OpenAI's own names (dall-e-3, gpt-image-1, ...): the model served now
        if model is None:
            raise RequestError(
                400,
                f"model: this server serves {catalog.describe_choices()} (GET /v1/models), not {name[:100]!r}",
                "model",
            )
        return model.folder

    def styled(body: OpenAIImageRequest, warnings: list[str]) -> tuple[str, str | None]:
        """The prompt and negative prompt with OpenAI's `style` applied (or a warning added)."""
        name, warning = style_of(body.style, app.state.styles)
        if warning is not None:
            warnings.append(warning)
        if name is None:
            return body.prompt, body.negative_prompt
        prompt, negative = apply_styles(body.prompt, body.negative_prompt or "", [name], app.state.styles, "style")
        return prompt, negative or None

    async def answer(
        request: Request, generation: GenerationRequest, body: OpenAIImageRequest, warnings: list[str], model
    ) -> JSONResponse:
        response_format = response_format_of(body.response_format, body.model)
        if response_format == URL and body.n > store.capacity:
            raise RequestError(
                400, f"n: at most {store.capacity} images per url answer (sdrt serve --url-images); or b64_json", "n"
            )
        prompt = generation.prompt
        result = await run(request, generation, model)
        seeds = result.parameters.get("seeds") or [result.parameters["seed"]]  # one per image (image_seeds)
        per_image = len(result.images) // max(len(seeds), 1)
        data = []
        for index, image in enumerate(result.images):
            text = format_parameters(prompt, result.parameters, index + 1 if len(result.images) > 1 else None)
            png = png_base64(image, text)
            if response_format == URL:
                item = {
                    "url": str(request.url_for("openai_image_file", name=f"{store.put(base64.b64decode(png))}.png"))
                }
            else:
                item = {"b64_json": png}
            item.update(revised_prompt=prompt, seed=seeds[min(index // max(per_image, 1), len(seeds) - 1)])
            data.append(item)
        warnings = warnings + result.warnings
        headers = {WARNINGS_HEADER: "; ".join(warnings).encode("ascii", "replace").decode()} if warnings else None
        return JSONResponse(
            jsonable_encoder(
                {
                    "created": int(time.time()),
                    "data": data,
                    "sdrt": {"parameters": result.parameters, "warnings": warnings},
                }
            ),
            headers=headers,
        )

    @app.get("/v1/images/files/{name}", name="openai_image_file")
    async def image_file(name: str):
        """An image a `response_format=url` answer points at, while it is kept."""
        png = store.get(name.removesuffix(".png"))
        if png is None:
            raise RequestError(
                404, f"no such image: image URLs are kept {settings.image_url_ttl_s:g} s (sdrt serve --url-ttl)"
            )
        return Response(png, media_type="image/png")

    def sampler_of(body: OpenAIImageRequest) -> str:
        """The sampler, checked here so that the error names the field the client used."""
        field = "sampler" if body.sampler is not None or body.scheduler is None else "scheduler"
        name = body.sampler or body.scheduler or DEFAULT_SAMPLER
        if name not in SAMPLERS:
            raise RequestError(
                400, f"{field}: unknown sampler {name!r}; choose one of {', '.join(SAMPLER_NAMES)}", field
            )
        return name

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [
                {"id": model.name, "object": "model", "created": 0, "owned_by": "sdrt"} for model in catalog.models()
            ],
        }

    def generation_of(body: OpenAIImageRequest) -> tuple[GenerationRequest, list[str], object]:
        """A generations body as a GenerationRequest, its warnings and its model's folder; run
        in a worker thread (styles, LoRA tags and images are read off the event loop)."""
        body.check()
        height, width = parse_openai_size(body.size)
        steps = steps_of(body.steps, body.quality)
        check_limits(body.n, steps, "n")
        warnings: list[str] = []
        prompt, negative = styled(body, warnings)
        if not settings.plain_prompts:
            check_lora_tags(body.prompt, "prompt")
        units = [
            ControlUnit(
                served_name(c.model, f"controlnets[{index}].model"),
                decode_image(c.image, f"controlnets[{index}].image"),
                c.scale,
                c.start,
                c.end,
                c.mode,
                c.preprocessor,
            )
            for index, c in enumerate(body.controlnets)
        ]
        model = check_model(body.model)
        generation = GenerationRequest(
            prompt,
            negative_prompt=negative,
            steps=steps,
            guidance_scale=guidance_of(body, model),
            height=height,
            width=width,
            seeds=seeds_for(body.seed, body.n),
            num_images=body.n,
            sampler=sampler_of(body),
            schedule=body.schedule,
            plain_prompt=settings.plain_prompts,
            controlnets=units,
            vae=body.vae,
            hires=hires_of(body),
            deepcache=deepcache_field(body.deepcache),
            cache=step_cache_field(body.cache),
            eta=body.eta,
            **body.sd3_settings(),
        )
        check_hires_steps(generation, "hires.steps")
        return generation, warnings, model

    @app.post("/v1/images/generations")
    async def generations(body: OpenAIImageRequest, request: Request):
        generation, warnings, model = await run_in_threadpool(generation_of, body)
        return await answer(request, generation, body, warnings, model)

    def edit_of(fields: dict, files: dict[str, bytes], needs_prompt: bool):
        """An edits/variations form as a GenerationRequest and its model's folder; run in a
        worker thread (the images are read off the event loop)."""
        if "image" not in files:
            raise RequestError(400, "image: an image file is required", "image")
        if needs_prompt and not fields.get("prompt"):
            raise RequestError(400, "prompt is required", "prompt")
        unknown = set(files) - {"image", "mask"} if needs_prompt else set(files) - {"image"}
        if unknown:
            param = sorted(unknown)[0]
            raise RequestError(400, f"{param}: not a file this route takes", param)
        body = form_body({**fields, "prompt": fields.get("prompt", "")})
        body.check()
        height, width = parse_openai_size(body.size)
        steps = steps_of(body.steps, body.quality)
        check_limits(body.n, steps, "n")
        model = check_model(body.model)
        kontext = edits_reference(service.pipeline, model)  # variations too: Kontext edits, never starts from
        if kontext and "mask" in files:
            raise RequestError(400, "mask: a FLUX.1 Kontext model edits the whole image; it takes no mask", "mask")
        image, mask = (
            edit_images(files["image"], files.get("mask")) if needs_prompt and not kontext else (files["image"], None)
        )
        strength = (
            body.strength if kontext else body.strength or (EDIT_STRENGTH if mask is not None else VARIATION_STRENGTH)
        )
        # FLUX.2 [klein] edits from the image as a reference (its pipeline has no image-to-image).
        referenced = (
            needs_prompt and mask is None and "reference_images" in served_family(service.pipeline, model).features
        )
        generation = GenerationRequest(
            body.prompt,
            negative_prompt=body.negative_prompt,
            steps=steps,
            guidance_scale=guidance_of(body, model),
            height=height,
            width=width,
            seeds=seeds_for(body.seed, body.n),
            num_images=body.n,
            sampler=sampler_of(body),
            schedule=body.schedule,
            init_image=None if referenced else image,
            reference_images=[image] if referenced else None,
            mask_image=png_bytes(mask) if mask is not None else None,
            strength=None if referenced else strength,
            plain_prompt=settings.plain_prompts,
            vae=body.vae,
            deepcache=deepcache_field(body.deepcache),
            cache=step_cache_field(body.cache),
            **body.sd3_settings(),
            **body.kontext_settings(),
        )
        return body, generation, model

    async def image_route(request: Request, needs_prompt: bool):
        fields, files = await read_form(request)
        body, generation, model = await run_in_threadpool(edit_of, fields, files, needs_prompt)
        return await answer(request, generation, body, [], model)

    @app.post("/v1/images/edits")
    async def edits(request: Request):
        return await image_route(request, needs_prompt=True)

    @app.post("/v1/images/variations")
    async def variations(request: Request):
        return await image_route(request, needs_prompt=False)
