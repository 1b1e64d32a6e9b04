"""Control images from photos, in NumPy (no OpenCV: the runtime stays small and torch-free).

- "none": the image already is a control map;
- "invert": white background and black lines to what ControlNets expect (A1111's "invert");
- "canny": OpenCV's `cv2.Canny(image, low, high)` as A1111's canny preprocessor calls it on an
  RGB image, reproduced exactly (tests compare with OpenCV): 3x3 Sobel gradients with replicated
  borders, per pixel the channel of largest |dx| + |dy|, non-maximum suppression along the
  gradient's direction quantized with OpenCV's fixed-point tangents, then hysteresis: pixels
  above `low` that connect (8-neighbourhood) to a pixel above `high`. White edges on black.

Depth, pose, line art and the other A1111 annotators need models of their own: not here yet.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from sdrt.errors import GenerationError

PREPROCESSORS = ("none", "invert", "canny")
#: A1111's names of the same preprocessors.
ALIASES = {"invert (from white bg & black line)": "invert"}
MAX_8BIT = 255
#: OpenCV's fixed-point tan(22.5 degrees): round(tan(pi / 8) * 2**15); tan(67.5) adds 2 * 2**15.
TAN_22_5 = 13573
FIXED_POINT_BITS = 15
NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def preprocessor_named(name: str) -> str | None:
    if not isinstance(name, str):
        return None
    name = ALIASES.get(name.lower(), name.lower())
    return name if name in PREPROCESSORS else None


def check_preprocessor(unit, where: str) -> None:
    if preprocessor_named(unit.preprocessor) is None:
        raise GenerationError(
            f"{where}: unknown preprocessor {unit.preprocessor!r}; choose one of "
            f"{', '.join(PREPROCESSORS)} (depth, pose and others need models sdrt does not run yet)",
            "controlnets",
        )
    for name in ("low_threshold", "high_threshold"):
        value = getattr(unit, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 4 * 4 * MAX_8BIT:
            raise GenerationError(
                f"{where}: {name} must be a number from 0 to {4 * 4 * MAX_8BIT}, got {value!r}", "controlnets"
            )


def preprocess(image: Image.Image, unit) -> Image.Image:
    """The control map the unit's preprocessor makes of an RGB image."""
    name = preprocessor_named(unit.preprocessor)
    if name == "none":
        return image
    pixels = np.asarray(image.convert("RGB"))
    if name == "invert":
        return Image.fromarray(MAX_8BIT - pixels)
    edges = canny(pixels, unit.low_threshold, unit.high_threshold)
    return Image.fromarray(np.repeat(edges[..., np.newaxis], 3, axis=2))


def sobel(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's 3x3 Sobel dx and dy of [H, W, C] with replicated borders, as int32."""
    p = np.pad(pixels.astype(np.int32), ((1, 1), (1, 1), (0, 0)), mode="edge")
    dx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    dy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    return dx, dy


def canny(pixels: np.ndarray, low: float, high: float) -> np.ndarray:
    """uint8 [H, W] edges (255) of uint8 [H, W] or [H, W, C] pixels."""
    if pixels.ndim == 2:
        pixels = pixels[..., np.newaxis]
    low, high = int(np.floor(low)), int(np.floor(high))
    low, high = min(low, high), max(low, high)
    dx, dy = sobel(pixels)
    magnitudes = np.abs(dx) + np.abs(dy)
    channel = np.argmax(magnitudes, axis=2)[..., np.newaxis]  # the first of equal ones, as OpenCV
    dx, dy = (np.take_along_axis(a, channel, axis=2)[..., 0] for a in (dx, dy))
    height, width = dx.shape
    mag = np.zeros((height + 2, width + 2), np.int64)  # zero outside the image, as OpenCV's buffer
    mag[1:-1, 1:-1] = np.take_along_axis(magnitudes, channel, axis=2)[..., 0]
    m = mag[1:-1, 1:-1]

    def at(dy_: int, dx_) -> np.ndarray:
        if isinstance(dx_, np.ndarray):  # a per-pixel column offset
            rows = np.arange(height)[:, None] + 1 + dy_
            cols = np.arange(width)[None, :] + 1 + dx_
            return mag[rows, cols]
        return mag[1 + dy_ : 1 + dy_ + height, 1 + dx_ : 1 + dx_ + width]

    x = np.abs(dx).astype(np.int64)
    y = np.abs(dy).astype(np.int64) << FIXED_POINT_BITS
    tan22 = x * TAN_22_5
    tan67 = tan22 + (x << (FIXED_POINT_BITS + 1))
    horizontal = y < tan22
    vertical = ~horizontal & (y > tan67)
    sign = np.where((dx ^ dy) < 0, -1, 1)
    maximum = np.where(
        horizontal,
        (m > at(0, -1)) & (m >= at(0, 1)),
        np.where(vertical, (m > at(-1, 0)) & (m >= at(1, 0)), (m > at(-1, -sign)) & (m > at(1, sign))),
    )
    candidate = maximum & (m > low)
    return _hysteresis(candidate, candidate & (m > high))


def _hysteresis(candidate: np.ndarray, strong: np.ndarray) -> np.ndarray:
    """Candidates connected to a strong pixel, grown from the strong ones a ring at a time (the
    work is proportional to the edges, not to the image times the longest edge)."""
    height, width = candidate.shape
    padded = np.zeros((height + 2, width + 2), bool)
    padded[1:-1, 1:-1] = candidate
    allowed = padded.ravel()
    edge = np.zeros_like(allowed)
    offsets = np.array([dy * (width + 2) + dx for dy, dx in NEIGHBOURS])
    frontier = np.flatnonzero(np.pad(strong, 1).ravel())
    edge[frontier] = True
    while frontier.size:
        reached = np.unique((frontier[:, None] + offsets[None, :]).ravel())
        reached = reached[allowed[reached] & ~edge[reached]]
        edge[reached] = True
        frontier = reached
    return (edge.reshape(height + 2, width + 2)[1:-1, 1:-1] * MAX_8BIT).astype(np.uint8)
