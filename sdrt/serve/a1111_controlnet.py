"""The A1111 ControlNet extension's routes beside its model and module listings:
`/controlnet/version` and `/controlnet/detect` with sdrt's preprocessors (none, invert, canny;
sdrt.runtime.features.controlnet.preprocess). The annotators that need models of their own
(depth, pose, ...) are refused by name."""

from __future__ import annotations

import numpy as np
from PIL import Image

from sdrt.runtime.features.controlnet.preprocess import MAX_8BIT, PREPROCESSORS, canny, preprocessor_named
from sdrt.runtime.imaging.inputs import MAX_INPUT_PIXELS, to_rgb
from sdrt.serve.a1111 import open_base64_image
from sdrt.serve.schemas import RequestError

#: The extension's external_code.get_api_version() of the API these routes follow.
CONTROLNET_API_VERSION = 2
#: The extension's body defaults and its processor resolution slider's range.
DEFAULT_RESOLUTION, MIN_RESOLUTION, MAX_RESOLUTION = 512, 64, 2048
DEFAULT_THRESHOLD = 64.0
MAX_THRESHOLD = 4 * 4 * MAX_8BIT  # |dx| + |dy| of 3x3 Sobel gradients on 8-bit pixels
#: The image field's name in the extension's body, and in webuiapi's controlnet_detect.
IMAGE_FIELDS = ("controlnet_input_images", "controlnet_images")


def _number(body: dict, field: str, default: float, low: float, high: float, integer: bool = False) -> float:
    value = body.get(field, default)
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise RequestError(400, f"{field} must be {kind} from {low:g} to {high:g}, got {value!r}", field)
    return value


def _at_resolution(image: Image.Image, resolution: int, field: str) -> Image.Image:
    """The image with its short side at `resolution`, as the extension resizes before canny
    (bicubic up, area down; PIL's, so not bit-equal to OpenCV's when a resize happens)."""
    scale = resolution / min(image.size)
    size = (round(image.width * scale), round(image.height * scale))
    if size == image.size:
        return image
    if size[0] * size[1] > MAX_INPUT_PIXELS:
        raise RequestError(
            400, f"controlnet_processor_res {resolution} makes {field} larger than {MAX_INPUT_PIXELS} pixels", field
        )
    return image.resize(size, Image.BICUBIC if scale > 1 else Image.BOX)


def detect(body: dict) -> dict:
    """The extension's /controlnet/detect answer: each input image through the module."""
    module = body.get("controlnet_module", "none")
    name = preprocessor_named(module)
    if name is None:
        raise RequestError(
            400,
            f"controlnet_module: sdrt has no preprocessor {module!r}; choose one of {', '.join(PREPROCESSORS)} "
            "(depth, pose and the other annotators need models sdrt does not run)",
            "controlnet_module",
        )
    field = next((f for f in IMAGE_FIELDS if f in body), IMAGE_FIELDS[0])
    images = body.get(field)
    if not isinstance(images, list) or not images:
        raise RequestError(400, f"{field} must be a non-empty list of base64-encoded images", field)
    resolution = _number(body, "controlnet_processor_res", DEFAULT_RESOLUTION, MIN_RESOLUTION, MAX_RESOLUTION, True)
    low = _number(body, "controlnet_threshold_a", DEFAULT_THRESHOLD, 0, MAX_THRESHOLD)
    high = _number(body, "controlnet_threshold_b", DEFAULT_THRESHOLD, 0, MAX_THRESHOLD)
    results = []
    for index, data in enumerate(images):
        where = f"{field}[{index}]"
        image = to_rgb(open_base64_image(data, where))
        if name == "invert":
            image = Image.fromarray(MAX_8BIT - np.asarray(image))
        elif name == "canny":
            edges = canny(np.asarray(_at_resolution(image, resolution, where)), low, high)
            image = Image.fromarray(np.repeat(edges[..., np.newaxis], 3, axis=2))
        results.append(image)
    return {"images": results, "info": "Success"}
