"""The OpenAI Images API: generations (JSON), edits and variations (multipart forms, as the
official client sends them), and the served models. Every PNG carries A1111's `parameters`
chunk, and each data item says its seed (`seed`, an extension field, as `sdrt.parameters`).

Edits: the mask's transparent pixels (alpha 0) are the ones to repaint, as in OpenAI's API; with
no mask, the image's own transparent pixels are; an image with no transparency and no mask is
an image-to-image edit. Variations: image-to-image from the image with an empty prompt (or the
`prompt` extension field). `size` "auto" (or none) is the model's native size for generations
and the input's size for edits and variations."""

from __future__ import annotations

import base64
import io
import time

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, Response
from PIL import Image, ImageOps
from starlette.datastructures import UploadFile

from sdrt.runtime.features.controlnet.units import ControlUnit
from sdrt.runtime.imaging.png_info import format_parameters
from sdrt.runtime.request import GenerationRequest
from sdrt.runtime.schedulers import DEFAULT_SAMPLER, SAMPLER_NAMES, SAMPLERS
from sdrt.runtime.seeds import seeds_for
from sdrt.runtime.sizes import SizeError, parse_size
from sdrt.runtime.text.prompts.styles import apply_styles
from sdrt.serve.a1111 import check_lora_tags, decode_image, deepcache_field, png_base64, served_name
from sdrt.serve.openai_compat import (
    URL,
    WARNINGS_HEADER,
    ImageStore,
    is_openai_model,
    response_format_of,
    steps_of,
    style_of,
)
from sdrt.serve.schemas import OpenAIImageRequest, RequestError

AUTO_SIZE = "auto"
#: Edits and variations: how much of the image changes (sdrt's extension field `strength`).
EDIT_STRENGTH, VARIATION_STRENGTH = 1.0, 0.75
#: Form fields of edits and variations besides the files, with their types.
FORM_NUMBERS = {"n": int, "steps": int, "seed": int, "guidance_scale": float, "strength": float}
FORM_TEXTS = (
    "prompt",
    "negative_prompt",
    "size",
    "response_format",
    "model",
    "sampler",
    "schedule",
    "user",
    "safety_identifier",
    "quality",
    "vae",
    "output_format",
    "background",
    "deepcache",
)


def parse_openai_size(size: str | None) -> tuple[int | None, int | None]:
    if size is None or size == AUTO_SIZE:
        return None, None
    try:
        return parse_size(size, "size")
    except SizeError as error:
        raise RequestError(400, f'{error} (or "auto")', "size") from None


async def _form(request: Request) -> tuple[dict, dict[str, bytes]]:
    """An edits/variations form: its fields (typed) and its files (`image`, `image[]`, `mask`)."""
    try:
        form = await request.form()
    except Exception:  # noqa: BLE001 - any unreadable form is the client's error
        raise RequestError(400, "the body must be multipart/form-data with an image file", "image") from None
    fields, files = {}, {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            files.setdefault(key.removesuffix("[]"), await value.read())
        elif key in FORM_NUMBERS:
            try:
                fields[key] = FORM_NUMBERS[key](value)
            except ValueError:
                raise RequestError(400, f"{key} must be a number, got {value[:40]!r}", key) from None
        elif key in FORM_TEXTS:
            fields[key] = value
        else:
            raise RequestError(400, f"{key}: not a field of this route", key)
    return fields, files


def _edit_images(image_file: bytes, mask_file: bytes | None) -> tuple[bytes, Image.Image | None]:
    """The image, and the inpainting mask (255 = repaint) from OpenAI's transparency convention."""
    from sdrt.runtime.imaging.inputs import open_image

    source = open_image(mask_file if mask_file is not None else image_file)
    if mask_file is None and "A" not in source.getbands() and "transparency" not in source.info:
        return image_file, None
    alpha = source.convert("RGBA").getchannel("A")
    if mask_file is None and alpha.getextrema() == (255, 255):
        return image_file, None  # fully opaque: nothing marked, an image-to-image edit
    return image_file, ImageOps.invert(alpha)


def hires_of(body: OpenAIImageRequest):
    from sdrt.runtime.features.hires import HiresFix, upscaler_named

    if body.hires is None:
        return None
    try:
        upscaler = upscaler_named(body.hires.upscaler)
    except ValueError as error:
        raise RequestError(400, f"hires.upscaler: {error}", "hires.upscaler") from None
    return HiresFix(scale=body.hires.scale, upscaler=upscaler, steps=body.hires.steps, strength=body.hires.strength)


def add_openai_routes(app: FastAPI, service, catalog, settings, run, check_limits) -> None:
    store = ImageStore(settings.image_url_ttl_s, settings.max_url_images)

    def check_model(name: str | None):
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
        return model

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
        request: Request, generation: GenerationRequest, body: OpenAIImageRequest, warnings: list[str]
    ) -> JSONResponse:
        response_format = response_format_of(body.response_format, body.model)
        if response_format == URL and body.n > store.capacity:
            raise RequestError(
                400, f"n: at most {store.capacity} images per url answer (sdrt serve --url-images); or b64_json", "n"
            )
        prompt = generation.prompt
        model = check_model(body.model)
        if model is not None:
            await app.state.switch_model(model.title, "model")
        result = await run(request, generation)
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

    @app.post("/v1/images/generations")
    async def generations(body: OpenAIImageRequest, request: Request):
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
        return await answer(
            request,
            GenerationRequest(
                prompt,
                negative_prompt=negative,
                steps=steps,
                guidance_scale=body.guidance_scale,
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
                eta=body.eta,
            ),
            body,
            warnings,
        )

    async def image_route(request: Request, needs_prompt: bool) -> dict:
        fields, files = await _form(request)
        if "image" not in files:
            raise RequestError(400, "image: an image file is required", "image")
        if needs_prompt and not fields.get("prompt"):
            raise RequestError(400, "prompt is required", "prompt")
        unknown = set(files) - {"image", "mask"} if needs_prompt else set(files) - {"image"}
        if unknown:
            param = sorted(unknown)[0]
            raise RequestError(400, f"{param}: not a file this route takes", param)
        body = OpenAIImageRequest.model_validate({**fields, "prompt": fields.get("prompt", "")})
        body.check()
        height, width = parse_openai_size(body.size)
        steps = steps_of(body.steps, body.quality)
        check_limits(body.n, steps, "n")
        image, mask = _edit_images(files["image"], files.get("mask")) if needs_prompt else (files["image"], None)
        strength = body.strength or (EDIT_STRENGTH if mask is not None else VARIATION_STRENGTH)
        return await answer(
            request,
            GenerationRequest(
                body.prompt,
                negative_prompt=body.negative_prompt,
                steps=steps,
                guidance_scale=body.guidance_scale,
                height=height,
                width=width,
                seeds=seeds_for(body.seed, body.n),
                num_images=body.n,
                sampler=sampler_of(body),
                schedule=body.schedule,
                init_image=image,
                mask_image=_png(mask) if mask is not None else None,
                strength=strength,
                plain_prompt=settings.plain_prompts,
                vae=body.vae,
                deepcache=deepcache_field(body.deepcache),
            ),
            body,
            [],
        )

    @app.post("/v1/images/edits")
    async def edits(request: Request):
        return await image_route(request, needs_prompt=True)

    @app.post("/v1/images/variations")
    async def variations(request: Request):
        return await image_route(request, needs_prompt=False)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
