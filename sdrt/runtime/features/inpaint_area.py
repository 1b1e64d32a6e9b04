"""A1111's handling of an inpainting mask around the inpainting itself (which stays diffusers'):
invert, blur, "only masked" (crop to the masked area, inpaint it at the request's size, put it
back), A1111's "fill" of the masked area before encoding, and the paste-back that keeps every
unmasked pixel of the original. The A1111 routes ask for all of it (as A1111 does); the CLI on
request (`--mask-blur`, `--invert-mask`, `--inpaint-area masked`, `--paste-back`).

The rules, from A1111's img2img processing (docs/serve.md):
- blur: a Gaussian of sigma `blur_x` along x, then `blur_y` along y, over 2*int(2.5*sigma+0.5)+1
  taps, edges mirrored without repeating the edge pixel (OpenCV's GaussianBlur on the 8-bit mask);
- only masked: the bounding box of the blurred mask's non-zero pixels, grown by `padding` on
  every side, then grown to the request's aspect ratio (centred, kept inside the image); image
  and mask are cropped to it and resized to the request's size (Lanczos); the result is resized
  back (Lanczos) into that box. An empty mask inpaints the whole image;
- fill: the masked area is replaced by the unmasked colours blurred into it, coarse to fine
  (radii 256, 64, 16, 4, 2, 0, composited 1, 1, 2, 4, 2, 1 times);
- paste-back: out = generated * m + original * (1 - m), per pixel, with m the blurred mask
  (only masked), or the blurred mask doubled and clipped at 1 (whole picture).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from sdrt.runtime.imaging.inputs import MAX_8BIT, mask_gray, to_rgb
from sdrt.runtime.loop.context import RunWatch

if TYPE_CHECKING:
    from sdrt.runtime.pipeline import GenerationResult, Pipeline
    from sdrt.runtime.request import GenerationRequest

MASK_FILLS = ("original", "fill")  # A1111's inpainting_fill 1 and 0
#: A1111's kernel size for a Gaussian of sigma s: 2 * int(KERNEL_SIGMAS * s + 0.5) + 1.
KERNEL_SIGMAS = 2.5
#: The "fill" passes: (blur radius, times composited), coarse to fine.
FILL_PASSES = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1))
#: Without "only masked", the paste-back uses the blurred mask times this (clipped).
WHOLE_PICTURE_OVERLAY_GAIN = 2.0


@dataclass(frozen=True)
class MaskOptions:
    invert: bool = False
    blur_x: int = 0
    blur_y: int = 0
    fill: str = "original"
    only_masked: bool = False
    padding: int = 0
    paste_back: bool = False

    def check(self) -> str | None:
        """What is wrong with these options, or None."""
        if self.fill not in MASK_FILLS:
            return f"mask fill must be one of {', '.join(MASK_FILLS)}, got {self.fill!r}"
        if min(self.blur_x, self.blur_y, self.padding) < 0:
            return "mask blur and padding must be >= 0"
        return None


def gaussian_kernel(sigma: float) -> np.ndarray:
    radius = int(KERNEL_SIGMAS * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-(offsets**2) / (2 * sigma * sigma))
    return kernel / kernel.sum()


def _blur_axis(values: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    if sigma <= 0:
        return values
    kernel = gaussian_kernel(sigma)
    radius = len(kernel) // 2
    pad = [(0, 0), (0, 0)]
    pad[axis] = (radius, radius)
    padded = np.pad(values, pad, mode="reflect")  # mirrored, edge pixel not repeated
    out = np.zeros_like(values)
    length = values.shape[axis]
    for tap, weight in enumerate(kernel):
        out += weight * np.take(padded, np.arange(tap, tap + length), axis=axis)
    return out


def blur_mask(mask: Image.Image, blur_x: float, blur_y: float) -> Image.Image:
    values = np.asarray(mask, dtype=np.float64)
    values = _blur_axis(_blur_axis(values, blur_x, axis=1), blur_y, axis=0)
    return Image.fromarray(np.clip(np.rint(values), 0, MAX_8BIT).astype(np.uint8))


def crop_box(mask: Image.Image, padding: int, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The "only masked" box (x1, y1, x2, y2) for a `width` x `height` request, or None."""
    rows = np.flatnonzero(np.asarray(mask).any(axis=1))
    cols = np.flatnonzero(np.asarray(mask).any(axis=0))
    if not len(rows):
        return None
    x1, y1 = max(int(cols[0]) - padding, 0), max(int(rows[0]) - padding, 0)
    x2, y2 = min(int(cols[-1]) + 1 + padding, mask.width), min(int(rows[-1]) + 1 + padding, mask.height)
    ratio = width / height
    box_w, box_h = x2 - x1, y2 - y1
    if box_w / box_h < ratio:  # too narrow: widen
        x1, x2 = _grow(x1, x2, round(box_h * ratio) - box_w, mask.width)
    else:  # too flat: heighten
        y1, y2 = _grow(y1, y2, round(box_w / ratio) - box_h, mask.height)
    return x1, y1, x2, y2


def _grow(start: int, end: int, extra: int, limit: int) -> tuple[int, int]:
    """[start, end) grown by `extra` pixels, half on each side, shifted to stay in [0, limit)."""
    start, end = start - extra // 2, end + extra - extra // 2
    if start < 0:
        start, end = 0, end - start
    if end > limit:
        start, end = max(start - (end - limit), 0), limit
    return start, end


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's "fill": the unmasked colours blurred into the masked area, coarse to fine."""
    unmasked = Image.new("RGBa", image.size)
    unmasked.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask))
    filled = Image.new("RGBA", image.size)
    for radius, times in FILL_PASSES:
        layer = unmasked.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(times):
            filled.alpha_composite(layer)
    return filled.convert("RGB")


def paste_back(generated: Image.Image, original: Image.Image, overlay_mask: Image.Image) -> Image.Image:
    m = np.asarray(overlay_mask, dtype=np.float32)[..., None] / np.float32(MAX_8BIT)
    out = np.asarray(generated, dtype=np.float32) * m + np.asarray(original, dtype=np.float32) * (1 - m)
    return Image.fromarray(np.clip(np.rint(out), 0, MAX_8BIT).astype(np.uint8))


@dataclass
class MaskedArea:
    """A request's image and mask as the inpainting sees them, and how its results go back."""

    image: Image.Image  # at the generation size
    mask: Image.Image
    original: Image.Image  # the picture the results go back into
    overlay: Image.Image | None  # the paste-back mask (None: no paste-back)
    box: tuple[int, int, int, int] | None  # the "only masked" box in `original`

    def finish(self, generated: Image.Image) -> Image.Image:
        if self.box is not None:
            x1, y1, x2, y2 = self.box
            placed = self.original.copy()
            placed.paste(generated.resize((x2 - x1, y2 - y1), resample=Image.LANCZOS), (x1, y1))
            generated = placed
        return generated if self.overlay is None else paste_back(generated, self.original, self.overlay)


def prepare_area(image: Image.Image, mask: Image.Image, width: int, height: int, options: MaskOptions) -> MaskedArea:
    """`image` and `mask` (same size) made ready for a `width` x `height` inpainting."""
    image, mask = to_rgb(image), mask_gray(mask)
    if options.invert:
        mask = ImageOps.invert(mask)
    mask = blur_mask(mask, options.blur_x, options.blur_y)
    box = crop_box(mask, options.padding, width, height) if options.only_masked else None
    if box is not None:
        original, overlay = image, mask
        image = image.crop(box).resize((width, height), resample=Image.LANCZOS)
        mask = mask.crop(box).resize((width, height), resample=Image.LANCZOS)
    else:
        if image.size != (width, height):
            image = image.resize((width, height), resample=Image.LANCZOS)
            mask = mask.resize((width, height), resample=Image.LANCZOS)
        original = image
        gained = np.asarray(mask, dtype=np.float32) * np.float32(WHOLE_PICTURE_OVERLAY_GAIN)
        overlay = Image.fromarray(np.clip(gained, 0, MAX_8BIT).astype(np.uint8))
    if options.fill == "fill":
        image = fill_masked(image, mask)
    return MaskedArea(image, mask, original, overlay if options.paste_back else None, box)


def masked_run(pipeline: Pipeline, request: GenerationRequest, watch: RunWatch) -> GenerationResult:
    """`pipeline.run(request)` with `request.mask_options` applied around the inpainting."""
    resolved = request.resolve(pipeline.manifest)  # opens and checks the images, fixes the size
    area = prepare_area(resolved.image, resolved.mask, resolved.width, resolved.height, request.mask_options)
    result = pipeline.run(
        replace(
            request,
            init_image=area.image,
            mask_image=area.mask,
            height=resolved.height,
            width=resolved.width,
            mask_options=None,
        ),
        watch.progress,
        watch.cancel,
        watch.preview,
    )
    result.images = [area.finish(image) for image in result.images]
    result.array = np.stack([np.asarray(image, dtype=np.float32) / np.float32(MAX_8BIT) for image in result.images])
    if area.box is not None:
        result.parameters.update(width=area.original.width, height=area.original.height)
    return result
