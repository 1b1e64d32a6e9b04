"""FLUX.1 Kontext's automatic sizes, as diffusers' `FluxKontextPipeline` chooses them (its
`_auto_resize`, on by default, and `max_area`):

- the output: the requested size's aspect ratio (the export's native size when none is given, as
  the pipeline's `default_sample_size`) at `max_area` pixels, each side rounded to the nearest
  pixel, then down to the model's multiple;
- the reference: resized to the preferred resolution whose aspect ratio is nearest its own (its
  size first rounded down to the multiple), ties to the smaller width.

With `kontext_auto_resize` off the reference keeps its own size (rounded down to the multiple);
the output follows `max_area` either way, as in the pipeline.
"""

from __future__ import annotations

import math

from sdrt.errors import GenerationError

#: FluxKontextPipeline's `max_area` default (diffusers 0.42: 1024 ** 2 pixels).
DEFAULT_MAX_AREA = 1024**2

#: diffusers' PREFERRED_KONTEXT_RESOLUTIONS (pipeline_flux_kontext.py, diffusers 0.42) as
#: (width, height): the resolutions Kontext was trained at, per its authors.
PREFERRED_KONTEXT_RESOLUTIONS = (
    (672, 1568),
    (688, 1504),
    (720, 1456),
    (752, 1392),
    (800, 1328),
    (832, 1248),
    (880, 1184),
    (944, 1104),
    (1024, 1024),
    (1104, 944),
    (1184, 880),
    (1248, 832),
    (1328, 800),
    (1392, 752),
    (1456, 720),
    (1504, 688),
    (1568, 672),
)


def max_area(request) -> int:
    """The request's `kontext_max_area` checked, or the pipeline's default."""
    area = request.kontext_max_area
    if area is None:
        return DEFAULT_MAX_AREA
    if not isinstance(area, int) or isinstance(area, bool) or area <= 0:
        raise GenerationError(f"kontext_max_area must be a positive number of pixels, got {area!r}", "kontext_max_area")
    return area


def auto_resize(request) -> bool:
    """The request's `kontext_auto_resize` checked: None is on (the pipeline's default)."""
    value = request.kontext_auto_resize
    if value is not None and not isinstance(value, bool):
        raise GenerationError(f"kontext_auto_resize must be true or false, got {value!r}", "kontext_auto_resize")
    return value is None or value


def output_size(height: int, width: int, area: int, multiple: int) -> tuple[int, int]:
    """(height, width): the aspect ratio of `height` x `width` at `area` pixels, on the grid."""
    aspect = width / height
    new_width, new_height = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
    return new_height // multiple * multiple, new_width // multiple * multiple


def reference_size(height: int, width: int, resize: bool, multiple: int) -> tuple[int, int]:
    """(height, width) the reference is encoded at; `height` x `width` is its size on the grid."""
    if resize:
        aspect = width / height
        _, width, height = min((abs(aspect - w / h), w, h) for w, h in PREFERRED_KONTEXT_RESOLUTIONS)
    return height // multiple * multiple, width // multiple * multiple
