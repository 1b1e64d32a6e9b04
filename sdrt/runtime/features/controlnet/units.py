"""The ControlNets of a request: one `ControlUnit` per ControlNet, with its control image and how
strongly and when it guides.

- `scale`: diffusers' `controlnet_conditioning_scale`, A1111's `weight`;
- `start`, `end`: the fraction of the denoising run it guides (diffusers'
  `control_guidance_start` / `control_guidance_end`, A1111's `guidance_start` / `guidance_end`);
- `mode` (A1111's control modes): "balanced" adds the residuals to both halves of guidance;
  "controlnet" is diffusers' guess mode: the ControlNet sees only the conditional half and its
  residuals are weighted from 0.1 (first block) up to 1 (mid block), the unconditional half
  gets none; "prompt" weights them the same way on both halves;
- `preprocessor` makes the control image from a photo (sdrt.runtime.features.controlnet.preprocess);
- `levels` (ComfyUI's rule, its ControlNet `timestep_range`), in place of `start` / `end`: the
  highest and lowest noise level it guides; a model call guides when its sigma lies between them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image

from sdrt.errors import GenerationError
from sdrt.runtime.features.controlnet.preprocess import check_preprocessor

PARAM = "controlnets"
#: A1111's control mode names -> sdrt's, both accepted (and A1111's indices 0, 1, 2).
CONTROL_MODES = {
    "balanced": "Balanced",
    "prompt": "My prompt is more important",
    "controlnet": "ControlNet is more important",
}
DEFAULT_MODE = "balanced"
#: The largest conditioning scale accepted (A1111's slider stops at 2).
MAX_SCALE = 10.0
#: ControlNets one request may use (A1111's extension offers 3 units by default); each adds a
#: ControlNet call per step, so this bounds a request's cost.
MAX_UNITS = 8


@dataclass(frozen=True)
class ControlUnit:
    """One ControlNet of a request. `model`: an exported ControlNet's folder, or its name in the
    pipeline's ControlNet folder. `image`: a path, encoded bytes or a PIL image."""

    model: str | Path
    image: str | Path | bytes | Image.Image | None = None
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    mode: str = DEFAULT_MODE
    preprocessor: str = "none"
    low_threshold: int = 100  # canny's thresholds (A1111's defaults), on 8-bit gradients
    high_threshold: int = 200
    levels: tuple[float, float] | None = None  # (highest, lowest) sigma guided, ComfyUI's rule

    @classmethod
    def parse(cls, text: str, image=None, **settings) -> ControlUnit:
        """`DIR[:SCALE]` as the CLI takes it (a path that itself holds a colon is taken whole
        when it exists)."""
        if not isinstance(text, str) or not text.strip():
            raise GenerationError("a ControlNet must be given as DIR or DIR:SCALE", PARAM)
        head, colon, tail = text.rpartition(":")
        if not colon or Path(text).exists() or "/" in tail or "\\" in tail:
            return cls(text, image, **settings)
        try:
            scale = float(tail)
        except ValueError:
            raise GenerationError(f"--controlnet {text}: the scale {tail!r} is not a number", PARAM) from None
        return cls(head, image, scale, **settings)

    @property
    def soft(self) -> bool:
        """Residuals weighted up the blocks (guess mode's weights)."""
        return self.mode != "balanced"

    @property
    def conditional_only(self) -> bool:
        """The ControlNet guides the conditional half of guidance only (guess mode)."""
        return self.mode == "controlnet"

    def check(self, index: int) -> ControlUnit:
        """This unit with its mode's sdrt name; a GenerationError naming the field if any is wrong."""
        where = f"controlnet {index + 1}"
        if self.image is None:
            raise GenerationError(f"{where} has no control image: give one (--control-image, or `image`)", PARAM)
        for name in ("scale", "start", "end"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise GenerationError(f"{where}: {name} must be a number, got {value!r}", PARAM)
        if not 0 <= self.scale <= MAX_SCALE:
            raise GenerationError(f"{where}: scale must be from 0 to {MAX_SCALE:g}, got {self.scale}", PARAM)
        if not 0 <= self.start < self.end <= 1:
            raise GenerationError(
                f"{where}: start and end must satisfy 0 <= start < end <= 1, got {self.start} and {self.end}", PARAM
            )
        if self.levels is not None and not (
            isinstance(self.levels, tuple)
            and len(self.levels) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in self.levels)
        ):
            raise GenerationError(
                f"{where}: levels must be two noise levels (highest, lowest), got {self.levels!r}", PARAM
            )
        mode = mode_named(self.mode, where)
        check_preprocessor(self, where)
        return self if mode == self.mode else replace(self, mode=mode)


def mode_named(mode, where: str) -> str:
    """sdrt's name of a control mode given by sdrt's name, A1111's name or A1111's index."""
    names = list(CONTROL_MODES)
    if isinstance(mode, int) and not isinstance(mode, bool) and 0 <= mode < len(names):
        return names[mode]
    if isinstance(mode, str):
        for name, title in CONTROL_MODES.items():
            if mode.lower() in (name, title.lower()):
                return name
    choices = ", ".join(f"{name!r} ({title})" for name, title in CONTROL_MODES.items())
    raise GenerationError(f"{where}: unknown control mode {mode!r}; choose one of {choices}", PARAM)


def check_units(units) -> tuple[ControlUnit, ...]:
    """A request's `controlnets`, each checked."""
    if isinstance(units, (str, ControlUnit)) or not isinstance(units, (list, tuple)):
        raise GenerationError("controlnets must be a list of ControlUnit", PARAM)
    if len(units) > MAX_UNITS:
        raise GenerationError(f"{len(units)} ControlNets in one request; at most {MAX_UNITS}", PARAM)
    for unit in units:
        if not isinstance(unit, ControlUnit):
            raise GenerationError(f"controlnets must be a list of ControlUnit, got {type(unit).__name__}", PARAM)
    return tuple(unit.check(index) for index, unit in enumerate(units))
