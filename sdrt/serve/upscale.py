"""A1111's `/sdapi/v1/extra-single-image` and `extra-batch-images` with the upscalers that need
no model: Lanczos and Nearest (and "None"), by a factor (resize_mode 0) or to a size (resize_mode 1, optionally
cropped to it), with A1111's blend of a second upscaler. Face restorers and model upscalers
(ESRGAN and friends) are refused by name."""

from __future__ import annotations

from PIL import Image

from sdrt.runtime.imaging.inputs import MAX_INPUT_PIXELS, to_rgb
from sdrt.serve.a1111 import open_base64_image
from sdrt.serve.schemas import RequestError

#: A1111's upscaler names -> PIL resampling (None: keep the size).
UPSCALERS = {"None": None, "Lanczos": Image.LANCZOS, "Nearest": Image.NEAREST}
MAX_FACTOR = 8.0


def _upscaler(body: dict, field: str, default: str) -> int | None:
    name = body.get(field, default)
    name = "None" if name in (None, "", "none") else name
    if name not in UPSCALERS:
        raise RequestError(
            400,
            f"{field}: sdrt has no upscaler {name!r}; choose one of {', '.join(UPSCALERS)} "
            "(model upscalers need weights sdrt does not run)",
            field,
        )
    return UPSCALERS[name]


def _number(body: dict, field: str, default: float, low: float, high: float) -> float:
    value = body.get(field, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise RequestError(400, f"{field} must be a number from {low:g} to {high:g}", field)
    return float(value)


def upscale_request(body: dict) -> tuple[Image.Image, str]:
    """The upscaled image and A1111's html_info for an extra-single-image body."""
    _check_options(body)
    image = upscale(to_rgb(open_base64_image(body.get("image"), "image")), body)
    return image, _html_info(image)


def upscale_batch_request(body: dict, max_images: int) -> tuple[list[Image.Image], str]:
    """The upscaled images and A1111's html_info for an extra-batch-images body: the same options
    over `imageList`, a list of {data (base64), name}; at most `max_images` of them."""
    _check_options(body)
    entries = body.get("imageList")
    if not isinstance(entries, list) or not entries:
        raise RequestError(400, "imageList must be a non-empty list of {data, name} images", "imageList")
    if len(entries) > max_images:
        raise RequestError(
            400,
            f"imageList holds {len(entries)} images; at most {max_images} per request (the server's --max-images)",
            "imageList",
        )
    images = []
    for index, entry in enumerate(entries):
        data = entry.get("data") if isinstance(entry, dict) else None
        images.append(upscale(to_rgb(open_base64_image(data, f"imageList[{index}].data")), body))
    return images, _html_info(images[-1])


def _html_info(image: Image.Image) -> str:
    return f"<p>Postprocess upscale to: {image.width}x{image.height}</p>"


def _check_options(body: dict) -> None:
    for field in ("gfpgan_visibility", "codeformer_visibility"):
        if _number(body, field, 0, 0, 1) > 0:
            raise RequestError(400, f"{field}: face restoration is not supported", field)
    for field in ("upscaler_1", "upscaler_2"):
        _upscaler(body, field, "None")


def upscale(image: Image.Image, body: dict) -> Image.Image:
    """An RGB image upscaled as A1111's extras options in `body` say."""
    first, second = _upscaler(body, "upscaler_1", "None"), _upscaler(body, "upscaler_2", "None")
    visibility = _number(body, "extras_upscaler_2_visibility", 0, 0, 1)
    mode = body.get("resize_mode", 0)
    if mode == 0:
        factor = _number(body, "upscaling_resize", 2, 1, MAX_FACTOR)
        size, crop = (int(image.width * factor), int(image.height * factor)), None
    elif mode == 1:
        width = int(_number(body, "upscaling_resize_w", 512, 1, image.width * MAX_FACTOR))
        height = int(_number(body, "upscaling_resize_h", 512, 1, image.height * MAX_FACTOR))
        if body.get("upscaling_crop", True):
            factor = max(width / image.width, height / image.height)
            size, crop = (round(image.width * factor), round(image.height * factor)), (width, height)
        else:
            size, crop = (width, height), None
    else:
        raise RequestError(400, "resize_mode must be 0 (scale by) or 1 (scale to)", "resize_mode")
    if size[0] * size[1] > MAX_INPUT_PIXELS:
        raise RequestError(
            400, f"the upscaled image would have more than {MAX_INPUT_PIXELS} pixels", "upscaling_resize"
        )

    def scaled(resample):
        return image if resample is None or size == image.size else image.resize(size, resample=resample)

    result = scaled(first)
    if second is not None and visibility > 0:
        result = Image.blend(result, scaled(second), visibility)
    if crop is not None and crop != result.size:
        left, top = (result.width - crop[0]) // 2, (result.height - crop[1]) // 2
        result = result.crop((left, top, left + crop[0], top + crop[1]))
    return result
