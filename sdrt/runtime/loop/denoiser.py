"""One denoising step's UNet prediction: the UNet run once per call of the step's conditioning
(sdrt.runtime.loop.conditioning: one call, or one per text length), each call with its residual
feeds (ControlNet residuals, or zeros; sdrt.runtime.features.controlnet.guidance)."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from sdrt.runtime.engines import Engine


def predict(engine: Engine, index: int, model_input: np.ndarray, scaled: np.ndarray, timestep: np.ndarray,
            calls: list, residuals: Callable | None) -> tuple[np.ndarray, float]:
    """(the UNet's output for every row, the seconds spent computing residuals). `scaled` is
    the scaled latents before an inpainting UNet's extra channels (what ControlNets see)."""
    control_seconds = 0.0

    def unet(rows, feeds):
        nonlocal control_seconds
        pick = (lambda a: a) if rows is None else (lambda a: a[rows])
        began = time.perf_counter()
        added = residuals(index, pick(scaled), timestep, feeds, rows) if residuals else {}
        control_seconds += time.perf_counter() - began
        return engine.run({"sample": pick(model_input), "timestep": timestep, **feeds, **added})["out_sample"]

    if len(calls) == 1:
        return unet(*calls[0]), control_seconds
    parts = [(rows, unet(rows, feeds)) for rows, feeds in calls]
    prediction = np.empty((len(model_input), *parts[0][1].shape[1:]), parts[0][1].dtype)
    for rows, part in parts:
        prediction[rows] = part
    return prediction, control_seconds
