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
- a mask (ConditioningSetMask) is resized bilinear to the latents; with `mask_bounds` its
  bounding box (at least MIN_BOUNDS a side; an empty mask: MIN_BOUNDS at 0, 0) becomes the area;
- an area is cut to the latents (get_area_and_mult: size min(H - offset, size)), and its weight is
  the strength, feathered over min(8, size // 4) rows and columns, (t + 1) / rr at row t from
  each edge that does not touch the latents' border; an entry without an area weighs its
  strength everywhere; a masked entry weighs mask x mask strength x strength on its window,
  without feather.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from sdrt.errors import GenerationError
from sdrt.runtime.imaging.resample import resize_latents

PARAM = "conditionings"
#: get_area_and_mult's feather: at most FEATHER rows, and a quarter of the area's side at most.
FEATHER, FEATHER_SHARE = 8, 4
#: resolve_areas_and_cond_masks_multidim's smallest side of a mask's bounds (ConditioningSetArea's 64 px).
MIN_BOUNDS = 8


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
    #: ConditioningSetMask's mask [batch or 1, height, width] in [0, 1] at any size, its strength,
    #: and whether its bounding box is the area (set_cond_area "mask bounds").
    mask: np.ndarray | None = field(default=None, compare=False)
    mask_strength: float = 1.0
    mask_bounds: bool = False

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
        if self.mask is not None:
            mask = self.mask
            if not isinstance(mask, np.ndarray) or mask.ndim not in (2, 3) or 0 in mask.shape:
                return "a conditioning's mask is an array [batch, height, width] or [height, width]"
            if not np.all(np.isfinite(mask)) or not _number(self.mask_strength):
                return "a conditioning's mask and its strength must be finite numbers"
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
    mask: np.ndarray | None = field(default=None, compare=False)  # [batch or 1, H, W] on the latents
    mask_strength: float = 1.0


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
        mask = None
        if entry.mask is not None:
            mask = np.asarray(entry.mask, np.float32).reshape(-1, *entry.mask.shape[-2:])
            if mask.shape[1:] != (rows, columns):
                mask = resize_latents(mask[:, None], rows, columns, "bilinear")[:, 0]
            if entry.mask_bounds:
                area = _bounds(mask)
        return Placed(entry.prompt, area, float(entry.strength), entry.levels, mask, float(entry.mask_strength))

    positive = [placed(entry) for entry in entries.positive]
    negative = [placed(entry) for entry in entries.negative]
    _with_same_areas(negative, positive)
    _with_same_areas(positive, negative)
    return negative, positive


def _bounds(mask: np.ndarray) -> tuple[int, int, int, int]:
    """get_mask_aabb of the mask's largest magnitude over its batch: (height, width, y, x), each
    side at least MIN_BOUNDS; an all-zero mask's is MIN_BOUNDS at 0, 0."""
    ys, xs = np.nonzero(np.abs(mask).max(axis=0))
    if len(ys) == 0:
        return MIN_BOUNDS, MIN_BOUNDS, 0, 0
    height, width = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
    return max(MIN_BOUNDS, height), max(MIN_BOUNDS, width), int(ys.min()), int(xs.min())


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
    """get_area_and_mult's mult over the entry's window, [batch or 1, height, width] float32."""
    y, x, height, width = window(entry.area, rows, columns)
    if entry.mask is not None:
        part = entry.mask[:, y : y + height, x : x + width] * np.float32(entry.mask_strength)
        return (part * np.float32(entry.strength)).astype(np.float32)
    mult = np.full((1, height, width), entry.strength, np.float32)
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
        mult *= ramp[None, :, None] if axis == 0 else ramp[None, None, :]
    return mult
