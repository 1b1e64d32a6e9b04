"""The OpenAI routes' inputs besides the JSON body: `size`, the edits and variations form (its
typed fields and its image files, read with their size checked from the header first) and
sdrt's hires extension field."""

from __future__ import annotations

import io

from fastapi import Request
from PIL import Image, ImageOps
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from sdrt.runtime.sizes import SizeError, parse_size
from sdrt.serve.schemas import MAX_SIDE, OpenAIImageRequest, RequestError

AUTO_SIZE = "auto"
#: The longest `size` text read ("16384x16384" is 11 characters).
MAX_SIZE_CHARS = 32
#: Edits and variations: how much of the image changes (sdrt's extension field `strength`).
EDIT_STRENGTH, VARIATION_STRENGTH = 1.0, 0.75
#: Form fields of edits and variations besides the files, with their types.
FORM_NUMBERS = {
    "n": int,
    "steps": int,
    "seed": int,
    "guidance_scale": float,
    "strength": float,
    "kontext_max_area": int,
}
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
    "cache",
    "kontext_auto_resize",  # "true" / "false", read by the body's boolean field
)


def parse_openai_size(size: str | None) -> tuple[int | None, int | None]:
    if size is None or size == AUTO_SIZE:
        return None, None
    if len(size) > MAX_SIZE_CHARS:
        raise RequestError(400, f'size must be WIDTHxHEIGHT in pixels (or "auto"), got {size[:40]!r}...', "size")
    try:
        height, width = parse_size(size, "size")
    except SizeError as error:
        raise RequestError(400, f'{error} (or "auto")', "size") from None
    if max(height, width) > MAX_SIDE:
        raise RequestError(400, f"size: {size} has a side over {MAX_SIDE} pixels", "size")
    return height, width


async def read_form(request: Request) -> tuple[dict, dict[str, bytes]]:
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


def form_body(fields: dict) -> OpenAIImageRequest:
    """An edits/variations form's fields as the request body; a bad value is a 400 naming it."""
    try:
        return OpenAIImageRequest.model_validate(fields)
    except ValidationError as error:
        first = error.errors()[0]
        param = ".".join(str(part) for part in first.get("loc", ())) or None
        raise RequestError(400, f"{param}: {first.get('msg', 'invalid value')}", param) from None


def _read_file(data: bytes, param: str) -> Image.Image:
    """An uploaded image file, decoded (its size checked from its header first); a file that is
    not an image, or is over the pixel limit, is a 400 naming `param`."""
    from sdrt.runtime.imaging.inputs import MAX_INPUT_PIXELS, InputImageError, open_image

    try:
        return open_image(data)
    except InputImageError:
        pass
    try:
        with Image.open(io.BytesIO(data)) as image:
            size = image.size
    except (OSError, ValueError, Image.DecompressionBombError):
        raise RequestError(
            400, f"{param}: the file is not an image PIL can read (PNG, JPEG, WebP, ...)", param
        ) from None
    raise RequestError(
        400,
        f"{param}: {size[0]}x{size[1]} is over the limit of {MAX_INPUT_PIXELS / 1e6:.0f} megapixels, "
        "or the file is damaged",
        param,
    )


def edit_images(image_file: bytes, mask_file: bytes | None) -> tuple[bytes, Image.Image | None]:
    """The image, and the inpainting mask (255 = repaint) from OpenAI's transparency convention;
    a file that is not an image (or too large) is a 400 naming `image` or `mask`."""
    image = _read_file(image_file, "image")
    source = image if mask_file is None else _read_file(mask_file, "mask")
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


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
