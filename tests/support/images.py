"""The image tolerance of the tests that compare a whole generation with diffusers: the issues'
2/255 largest and 0.5/255 mean difference per pixel channel, in [0, 1] units."""

from __future__ import annotations

import numpy as np

MAX_PIXEL_ERROR = 2 / 255
MEAN_PIXEL_ERROR = 0.5 / 255


def assert_same_image(got: np.ndarray, expected: np.ndarray) -> None:
    difference = np.abs(got - expected)
    assert difference.max() <= MAX_PIXEL_ERROR, f"max {difference.max() * 255:.3f}/255"
    assert difference.mean() <= MEAN_PIXEL_ERROR, f"mean {difference.mean() * 255:.3f}/255"
    assert expected.std() > 0.01, "a flat reference image would hide any difference"
