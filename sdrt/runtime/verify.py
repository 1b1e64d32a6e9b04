"""`sdrt verify`: one image through a GPU backend and through the fp32 CPU path, compared.

The same prompt, seed, size and steps go through both; the report gives the pixel error, its
PSNR, whether either image has NaNs, and each side's timings. fp16 engines differ from fp32 by
rounding that the denoising loop carries along, so the pass mark is on the mean error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sdrt.runtime.pipeline import Pipeline

PROMPT = "a photograph of an astronaut riding a horse"
SEED = 1234
STEPS = 8
#: Mean absolute pixel error allowed against the fp32 CPU image (fp16 engines, a few steps).
MEAN_TOLERANCE = 2 / 255


def compare(got: np.ndarray, expected: np.ndarray) -> dict:
    difference = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    mse = float(np.mean(difference**2))
    return {
        "max_abs": float(difference.max()),
        "mean_abs": float(difference.mean()),
        "psnr_db": math.inf if mse == 0 else 10 * math.log10(1 / mse),
        "finite": bool(np.isfinite(got).all()),
    }


def verify(
    folder: str | Path,
    backend: str,
    steps: int = STEPS,
    height: int | None = None,
    width: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    say = progress or (lambda line: None)
    candidate = Pipeline.load(folder, backend=backend, progress=progress)
    # The candidate's manifest is narrowed to what its engines accept: use its native size.
    dims = candidate.manifest.dims
    height = height or (dims["height"].opt if "height" in dims else candidate.manifest.native_height)
    width = width or (dims["width"].opt if "width" in dims else candidate.manifest.native_width)
    settings = dict(prompt=PROMPT, steps=steps, seed=SEED, height=height, width=width)
    say(f"{backend}: generating {width}x{height}, {steps} steps")
    got = candidate.generate(**settings)
    say("cpu (fp32 reference): generating")
    expected = Pipeline.load(folder, backend="cpu").generate(**settings)
    report = compare(got.array, expected.array)
    report.update(
        backend=backend,
        reference="cpu",
        settings={k: v for k, v in settings.items() if k != "prompt"},
        tolerance_mean_abs=MEAN_TOLERANCE,
        passed=report["finite"] and report["mean_abs"] <= MEAN_TOLERANCE,
        timings={backend: _seconds(got.timings), "cpu": _seconds(expected.timings)},
    )
    return report


def _seconds(timings: dict) -> dict:
    steps = timings.get("unet_steps") or []
    return {"total": timings.get("total"), "unet_step_median": float(np.median(steps)) if steps else None}
