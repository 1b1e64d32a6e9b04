"""The residual feeds of each UNet call, as diffusers' ControlNet pipelines compute them.

Before each UNet call the request's ControlNets run on the same scaled latents (before an
inpainting UNet's extra channels), timestep and text conditioning, with their control images;
each residual is multiplied by the unit's scale (guess mode: times 10^(-1 + k/n) for residual
k of n, so 0.1 for the first and 1 for the mid block) and the units' residuals are summed in
order. A unit guides the UNet calls i of n (counted from the run's first) with
i/n >= start and (i+1)/n <= end; outside them it is not run at all (its scale would be 0). A
unit in guess mode runs on the conditional rows only and gives the unconditional rows zeros.

A call no unit guides gets no residual feeds: the UNet's engine then feeds zeros
(sdrt.runtime.engines.base), and adding zero leaves its output exactly as without them
(docs/controlnet.md measures the cost).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sdrt.runtime.engines import Engine
from sdrt.runtime.loop.context import StepContext
from sdrt.runtime.loop.hooks import ModelCall, StepHook
from sdrt.runtime.loop.timings import CONTROLNET_STEPS
from sdrt.runtime.manifest import CONTROL_IMAGE, DENOISER_SAMPLE, DENOISER_TIMESTEP, residual_names

#: Guess mode's weights run from 10^-1 (the first residual) to 10^0 (the mid block's).
SOFT_WEIGHTS_FROM, SOFT_WEIGHTS_TO = -1.0, 0.0


@dataclass
class PreparedUnit:
    """One unit of a request, ready to run: its engine, control image [1, C, H, W] in the
    engine's dtype, scale, the calls it guides (a 0/1 per call) and its mode."""

    engine: Engine
    image: np.ndarray
    scale: float
    keep: np.ndarray
    soft: bool
    conditional_only: bool


def guidance_window(start: float, end: float, calls: int) -> np.ndarray:
    """1 for the calls a unit guides, of `calls` (diffusers' `controlnet_keep`)."""
    return np.array([0.0 if i / calls < start or (i + 1) / calls > end else 1.0 for i in range(calls)])


def level_window(levels: tuple[float, float], call_sigmas: np.ndarray) -> np.ndarray:
    """1 for the calls whose noise level lies in (highest, lowest) `levels` (ComfyUI's ControlNet
    get_control: skipped when sigma > highest or sigma < lowest, compared in float32)."""
    sigmas = np.asarray(call_sigmas, np.float32)
    highest, lowest = np.float32(levels[0]), np.float32(levels[1])
    return ((sigmas <= highest) & (sigmas >= lowest)).astype(np.float64)


class ControlRun(StepHook):
    """The residual feeds of one denoising run's UNet calls: a step hook whose extra feeds are
    each call's residuals, computed from its scaled latents, timestep, conditioning and rows."""

    feeds_measure = CONTROLNET_STEPS

    def __init__(self, units: list[PreparedUnit], unet: Engine, first: int, guided: bool, total_rows: int):
        self.units = units
        self.first = first
        self.guided = guided
        self.total_rows = total_rows
        self.names = residual_names(unet.spec)  # down blocks in order, then mid
        self.dtypes = {name: unet.input_dtype(name) for name in self.names}

    def extra_feeds(self, ctx: StepContext, call: ModelCall) -> dict[str, np.ndarray]:
        return self.residuals(ctx.index, call.scaled, call.timestep, call.feeds, call.rows)

    def residuals(
        self, index: int, sample: np.ndarray, timestep: np.ndarray, feeds: dict, rows: np.ndarray | None
    ) -> dict[str, np.ndarray]:
        rows = np.arange(self.total_rows) if rows is None else rows
        summed: dict[str, np.ndarray] | None = None
        for unit in self.units:
            scale = unit.scale * unit.keep[index - self.first]
            if scale == 0:
                continue
            active = rows >= self.total_rows // 2 if unit.conditional_only and self.guided else np.ones(len(rows), bool)
            if not active.any():
                continue
            residuals = self._run(unit, sample, timestep, feeds, active, np.float32(scale))
            if summed is None:
                summed = residuals
            else:
                summed = {name: summed[name] + residuals[name] for name in self.names}
        if summed is None:
            return {}  # the UNet's engine feeds zeros
        return {name: value.astype(self.dtypes[name], copy=False) for name, value in summed.items()}

    def _run(self, unit: PreparedUnit, sample, timestep, feeds, active: np.ndarray, scale: np.float32) -> dict:
        engine = unit.engine
        everyone = bool(active.all())
        pick = (lambda a: a) if everyone else (lambda a: a[active])
        count = int(active.sum())
        inputs = {
            DENOISER_SAMPLE: pick(sample),
            DENOISER_TIMESTEP: timestep,
            CONTROL_IMAGE: np.repeat(unit.image, count, axis=0),
        }
        for name in engine.inputs:
            if name not in inputs:
                inputs[name] = pick(feeds[name])
        inputs = {name: value.astype(engine.input_dtype(name), copy=False) for name, value in inputs.items()}
        outputs = engine.run(inputs)
        weights = np.full(len(self.names), scale, np.float32)
        if unit.soft:
            weights = np.logspace(SOFT_WEIGHTS_FROM, SOFT_WEIGHTS_TO, len(self.names)).astype(np.float32) * scale
        result = {}
        for name, weight in zip(self.names, weights):
            value = outputs[name].astype(np.float32) * weight
            if not everyone:
                full = np.zeros((len(active), *value.shape[1:]), np.float32)
                full[active] = value
                value = full
            result[name] = value
        return result
