"""Input images for image-to-image: one rule for every mode and size.

- Modes: RGB as is; RGBA, LA and P with transparency are flattened onto white (as AUTOMATIC1111
  does by default); L, P, CMYK and the rest are converted to RGB; 16-bit and 32-bit grayscale
  (I;16, I) are scaled from their full range to 8 bits first.
- Size: the output size is the requested height and width, or else the image's own size rounded
  down to the model's size multiple; an image of another size is resized to it with Lanczos
  filtering (diffusers' VaeImageProcessor resamples the same way).
- Values: 8-bit RGB becomes float32 in [-1, 1] as 2 * (v / 255) - 1, NCHW.

Masks (inpainting; white = repaint, black = keep): an image with an alpha channel (RGBA, LA, or
P with transparency) is read by its alpha, opaque = repaint; any other mode is converted to
grayscale (1-bit, L, RGB alike). The mask must have the image's size; it is resized with the
image, then binarized at half intensity, as diffusers' mask processor does.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from sdrt.errors import SdrtError
from sdrt.runtime.files.user_files import MAX_IMAGE_BYTES, open_regular

FLATTEN_BACKGROUND = (255, 255, 255)
MAX_8BIT = 255
# Full scale of PIL's integer grayscale modes.
INTEGER_MODE_RANGE = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I": 65535}
#: The largest input image decoded, in pixels (a 7680x5120 photo fits): an RGB image this size
#: takes 120 MB decoded. Larger ones are refused from their header, before any decoding.
MAX_INPUT_PIXELS = 40_000_000


class InputImageError(SdrtError):
    """An input image cannot be read or does not fit the request."""


def check_pixels(size: tuple[int, int], name: str, max_pixels: int = MAX_INPUT_PIXELS) -> None:
    width, height = size
    if width * height > max_pixels:
        raise InputImageError(
            f"{name} is {width}x{height} ({width * height / 1e6:.0f} megapixels); "
            f"the limit is {max_pixels / 1e6:.0f} megapixels"
        )


def open_image(source: str | Path | bytes | Image.Image, max_pixels: int = MAX_INPUT_PIXELS) -> Image.Image:
    """A loaded PIL image from a path, encoded bytes or an image; a missing or corrupt file, or
    one over `max_pixels` (checked from its header, before decoding), is a clear error."""
    if isinstance(source, Image.Image):
        check_pixels(source.size, "the input image", max_pixels)
        return source
    if isinstance(source, (bytes, bytearray)):
        stream, name = io.BytesIO(source), "the input image"
    else:
        name = f"input image {source}"
        stream = open_regular(source, MAX_IMAGE_BYTES, InputImageError, name)
    try:
        with stream, Image.open(stream) as image:  # reads the header only
            check_pixels(image.size, name, max_pixels)
            image.load()
            return image.copy()
    except Image.DecompressionBombError:
        raise InputImageError(f"{name} is larger than the limit of {max_pixels / 1e6:.0f} megapixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise InputImageError(f"cannot read {name} as an image: {error}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB by the module's rule (alpha flattened onto white, high bit depths scaled)."""
    if image.mode == "RGB":
        return image
    if image.mode in INTEGER_MODE_RANGE:
        values = np.asarray(image, dtype=np.float64) / INTEGER_MODE_RANGE[image.mode] * MAX_8BIT
        image = Image.fromarray(np.clip(values.round(), 0, MAX_8BIT).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, FLATTEN_BACKGROUND + (MAX_8BIT,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def target_size(image: Image.Image, height: int | None, width: int | None, multiple: int) -> tuple[int, int]:
    """(height, width): as requested, else the image's size rounded down to `multiple`."""
    if height is None:
        height = image.height - image.height % multiple
    if width is None:
        width = image.width - image.width % multiple
    if height < multiple or width < multiple:
        raise InputImageError(
            f"input image {image.width}x{image.height} is smaller than this model's minimum side {multiple}"
        )
    return height, width


def to_control_input(image: Image.Image, height: int, width: int) -> np.ndarray:
    """float32 [1, 3, height, width] in [0, 1]: a ControlNet's control image (diffusers' control
    image processor: RGB, Lanczos resize, no normalization)."""
    image = to_rgb(image)
    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.LANCZOS)
    return (np.asarray(image).astype(np.float32) / np.float32(MAX_8BIT)).transpose(2, 0, 1)[np.newaxis]


def to_model_input(image: Image.Image, height: int, width: int) -> np.ndarray:
    """float32 [1, 3, height, width] in [-1, 1]."""
    return np.float32(2.0) * to_control_input(image, height, width) - np.float32(1.0)


MASK_THRESHOLD = 0.5


def mask_gray(mask: Image.Image) -> Image.Image:
    """A mask as 8-bit gray, 255 = repaint: its alpha where it has one, else its luminance."""
    if mask.mode in ("RGBA", "LA", "PA") or (mask.mode == "P" and "transparency" in mask.info):
        return mask.convert("RGBA").getchannel("A")
    if mask.mode in INTEGER_MODE_RANGE:
        return to_rgb(mask).convert("L")
    return mask.convert("L")


def to_mask_input(mask: Image.Image, image: Image.Image, height: int, width: int) -> np.ndarray:
    """float32 [1, 1, height, width] of 0 (keep) and 1 (repaint)."""
    if mask.size != image.size:
        raise InputImageError(
            f"the mask is {mask.width}x{mask.height} but the image is {image.width}x{image.height}; "
            "they must have the same size"
        )
    gray = mask_gray(mask)
    if gray.size != (width, height):
        gray = gray.resize((width, height), resample=Image.LANCZOS)
    values = np.asarray(gray).astype(np.float32) / np.float32(MAX_8BIT)
    return (values >= MASK_THRESHOLD).astype(np.float32)[np.newaxis, np.newaxis]


def downsample_nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """torch.nn.functional.interpolate(mode="nearest") to [.., height, width]: source index
    floor(i * in / out)."""
    in_h, in_w = mask.shape[-2:]
    rows = np.minimum(np.floor(np.arange(height) * (in_h / height)).astype(np.int64), in_h - 1)
    cols = np.minimum(np.floor(np.arange(width) * (in_w / width)).astype(np.int64), in_w - 1)
    return mask[..., rows[:, None], cols[None, :]]
