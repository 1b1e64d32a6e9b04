"""What the quantization benchmarks share (quantization.py, qdq_image_change.py,
quantization_families.py): images an export generates on sdrt's CPU runtime, and how far one
image moved from a reference."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

PIXEL_MAX = 255.0


def generated(folder: Path, prompts: Sequence[str], steps: int, seed: int, size: int | None = None) -> list[np.ndarray]:
    """One image per prompt from the export in `folder` (float64 pixels; `size`: a square side,
    else the export's native size)."""
    from sdrt.runtime.pipeline import Pipeline

    pipeline = Pipeline.load(folder)
    settings = {"steps": steps, "seed": seed} | ({} if size is None else {"height": size, "width": size})
    return [np.asarray(pipeline.generate(prompt, **settings).images[0], dtype=np.float64) for prompt in prompts]


def image_change(got: np.ndarray, reference: np.ndarray) -> dict:
    """The largest and mean pixel change over 255, and the PSNR in dB (inf for equal images)."""
    difference = np.abs(got - reference)
    mse = float(np.mean(difference**2))
    return {
        "max_over_255": float(difference.max() / PIXEL_MAX),
        "mean_over_255": float(difference.mean() / PIXEL_MAX),
        "psnr_db": math.inf if mse == 0 else 10 * math.log10(PIXEL_MAX**2 / mse),
    }
