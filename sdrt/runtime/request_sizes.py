"""A request's height and width against the export's range and multiple: one error naming every
wrong side, with the nearest sizes the export takes."""

from __future__ import annotations

import numpy as np

from sdrt.errors import GenerationError
from sdrt.runtime.manifest import HEIGHT, WIDTH, Manifest


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def nearest_multiples(value: int, multiple: int, low: int, high: int) -> list[int]:
    """The valid sizes around `value`: multiples of `multiple` within low..high."""
    first, last = -(-low // multiple) * multiple, high // multiple * multiple
    below = min(max(first, value // multiple * multiple), last)
    above = min(last, below + multiple) if below < value else below
    return sorted({below, above})


def side_problem(manifest: Manifest, name: str, value) -> str | None:
    """What is wrong with a height or width for the export's range and multiple, or None."""
    if not _is_int(value) or value < 1:
        return f"{name} must be a positive integer, got {value!r}"
    valid = manifest.dims.get(HEIGHT if name == "height" else WIDTH)
    if valid is None or valid.contains(value):
        return None
    nearest = nearest_multiples(value, valid.multiple, valid.min, valid.max)
    in_range = valid.min <= value <= valid.max
    if value % valid.multiple == 0:  # so out of range
        closest = min(nearest, key=lambda size: abs(size - value))
        return (
            f"{name} {value} is outside this export's range {valid.min}..{valid.max}: the nearest valid "
            f"{name} is {closest}"
        )
    where = "" if in_range else f" and is outside this export's range {valid.min}..{valid.max}"
    options = " or ".join(str(size) for size in nearest)
    return f"{name} {value} is not a multiple of {valid.multiple}, which this model needs{where}: use {options}"


def check_size(manifest: Manifest, height, width) -> None:
    """Both sides against the export; one error naming every side that is wrong (the first's field)."""
    problems = [(name, side_problem(manifest, name, value)) for name, value in (("height", height), ("width", width))]
    wrong = [(name, problem) for name, problem in problems if problem is not None]
    if wrong:
        raise GenerationError("; ".join(problem for _, problem in wrong), wrong[0][0])
