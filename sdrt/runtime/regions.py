"""Several conditionings for one sampler run, as ComfyUI's conditioning lists hold them: each
entry a prompt with an optional area of the latents, a strength and a noise-level window
(ConditioningCombine, ConditioningSetArea, ConditioningSetAreaPercentage,
ConditioningSetAreaStrength, ConditioningSetTimestepRange). `GenerationRequest.conditionings`
carries them; the loop runs them with sdrt.runtime.loop.regional.

ComfyUI's rules (comfy/samplers.py), resolved here once the latents' size is known:

- a percentage area becomes latent units at sampling start (resolve_areas_and_cond_masks_multidim):
  size max(1, round(p * H)), offset round(p * H), per side;
- each side gets a copy of every area entry of the other side it has none of the same area for,
  with the text of its own smallest entry that holds the area (create_cond_with_same_area_if_none);
- an area is cut to the latents (get_area_and_mult: size min(H - offset, size)), and its weight is
  the strength, feathered over min(8, size // 4) rows and columns, (t + 1) / rr at row t from
  each edge that does not touch the latents' border; an entry without an area weighs its
  strength everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from sdrt.errors import GenerationError

PARAM = "conditionings"
#: get_area_and_mult's feather: at most FEATHER rows, and a quarter of the area's side at most.
FEATHER, FEATHER_SHARE = 8, 4


@dataclass(frozen=True)
class Area:
    """A rectangle of the latents, ComfyUI's (height, width, y, x): latent units
    (ConditioningSetArea's pixels // 8) or, with `percentage`, fractions of the latents' sides
    (ConditioningSetAreaPercentage), resolved when the latents' size is known."""

    height: float
    width: float
    y: float
    x: float
    percentage: bool = False

    def resolve(self, rows: int, columns: int) -> tuple[int, int, int, int]:
        """(height, width, y, x) in latent units on latents of `rows` x `columns`."""
        if not self.percentage:
            return int(self.height), int(self.width), int(self.y), int(self.x)
        return (
            max(1, round(self.height * rows)),
            max(1, round(self.width * columns)),
            round(self.y * rows),
            round(self.x * columns),
        )


@dataclass(frozen=True)
class ConditioningEntry:
    """One conditioning of a list: its prompt, area (None: all the latents), strength and the
    noise levels (highest, lowest) of the model calls it takes part in (None: all of them;
    ComfyUI's timestep_start / timestep_end, the sigmas of ConditioningSetTimestepRange's
    percents)."""

    prompt: str
    area: Area | None = None
    strength: float = 1.0
    levels: tuple[float, float] | None = None

    def problem(self) -> str | None:
        if not isinstance(self.prompt, str):
            return f"a conditioning's prompt must be text, got {type(self.prompt).__name__}"
        if not _number(self.strength) or self.strength < 0:
            return f"a conditioning's strength must be a finite number >= 0, got {self.strength!r}"
        if self.area is not None:
            values = (self.area.height, self.area.width, self.area.y, self.area.x)
            if not all(_number(value) and value >= 0 for value in values):
                return f"a conditioning's area takes numbers >= 0, got {values}"
            if self.area.percentage and not all(value <= 1 for value in values):
                return f"a percentage area takes fractions in [0, 1], got {values}"
            if not self.area.percentage and not all(float(value).is_integer() for value in values):
                return f"an area in latent units takes whole numbers, got {values}"
        if self.levels is not None and not (len(self.levels) == 2 and all(_number(level) for level in self.levels)):
            return f"a conditioning's levels are two noise levels, got {self.levels!r}"
        return None


@dataclass(frozen=True)
class ConditioningEntries:
    """The positive and negative conditioning lists of one sampler run."""

    positive: tuple[ConditioningEntry, ...]
    negative: tuple[ConditioningEntry, ...]

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        if not self.positive:
            raise GenerationError("conditionings needs at least one positive entry", PARAM)
        for entry in (*self.positive, *self.negative):
            problem = entry.problem()
            if problem is not None:
                raise GenerationError(problem, PARAM)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Placed:
    """An entry on latents of a known size: its area as ComfyUI's (height, width, y, x) tuple."""

    prompt: str
    area: tuple[int, int, int, int] | None
    strength: float
    levels: tuple[float, float] | None


def _inside(inner: tuple[int, ...], outer: tuple[int, ...]) -> bool:
    """create_cond_with_same_area_if_none's area_inside: `inner` lies within `outer`."""
    return all(inner[2 + i] >= outer[2 + i] and inner[i] + inner[2 + i] <= outer[i] + outer[2 + i] for i in range(2))


def _size(area: tuple[int, ...]) -> int:
    return math.prod(area[:2])


def _with_same_areas(side: list[Placed], other: list[Placed]) -> None:
    """create_cond_with_same_area_if_none for each of `other`'s entries, appending to `side`."""
    for entry in other:
        if entry.area is None:
            continue
        smallest: Placed | None = None
        for candidate in side:
            if candidate.area is None:
                smallest = candidate if smallest is None else smallest
            elif _inside(entry.area, candidate.area) and (
                smallest is None or smallest.area is None or _size(smallest.area) > _size(candidate.area)
            ):
                smallest = candidate
        if smallest is None or smallest.area == entry.area:
            continue
        side.append(replace(entry, prompt=smallest.prompt))


def place(entries: ConditioningEntries, rows: int, columns: int) -> tuple[list[Placed], list[Placed]]:
    """(negative, positive) on latents of `rows` x `columns`, with ComfyUI's copies of areas
    (process_conds: the positive's areas into the negative first, then the negative's back)."""

    def placed(entry: ConditioningEntry) -> Placed:
        area = None if entry.area is None else entry.area.resolve(rows, columns)
        return Placed(entry.prompt, area, float(entry.strength), entry.levels)

    positive = [placed(entry) for entry in entries.positive]
    negative = [placed(entry) for entry in entries.negative]
    _with_same_areas(negative, positive)
    _with_same_areas(positive, negative)
    return negative, positive


def window(area: tuple[int, int, int, int] | None, rows: int, columns: int) -> tuple[int, int, int, int]:
    """(y, x, height, width) of the latents an entry's model call sees: its area cut to the latents."""
    if area is None:
        return 0, 0, rows, columns
    height, width, y, x = area
    height, width = min(rows - y, height), min(columns - x, width)
    if height <= 0 or width <= 0:
        raise GenerationError(
            f"the area {width}x{height} at ({x}, {y}) (latent units) lies outside the {columns}x{rows} latents", PARAM
        )
    return y, x, height, width


def weights(entry: Placed, rows: int, columns: int) -> np.ndarray:
    """get_area_and_mult's mult over the entry's window, [height, width] float32."""
    y, x, height, width = window(entry.area, rows, columns)
    mult = np.full((height, width), entry.strength, np.float32)
    if entry.area is None:
        return mult
    for axis, (offset, size, total) in enumerate(((y, height, rows), (x, width, columns))):
        feather = min(FEATHER, size // FEATHER_SHARE)
        ramp = np.ones(size, np.float32)
        for t in range(feather):
            factor = np.float32((1.0 / feather) * (t + 1))
            if offset != 0:
                ramp[t] *= factor
            if offset + size < total:
                ramp[size - 1 - t] *= factor
        mult *= ramp[:, None] if axis == 0 else ramp[None, :]
    return mult
