"""Windows of the latents a model call covers, one per row (ComfyUI's areas,
sdrt.runtime.loop.regional): the rows' windows cut out for the call, its output pasted back."""

from __future__ import annotations

import numpy as np

#: One (y, x, height, width) on the latents per row of a call; the windows of a call share a size.
Windows = tuple[tuple[int, int, int, int], ...]


def crop(array: np.ndarray, rows: np.ndarray, windows: Windows) -> np.ndarray:
    """The rows' windows of `array` [batch, channels, H, W], stacked."""
    return np.stack([array[row, :, y : y + h, x : x + w] for row, (y, x, h, w) in zip(rows, windows)])


def paste(into: np.ndarray, rows: np.ndarray, windows: Windows, part: np.ndarray) -> None:
    """Each row of `part` into its row's window of `into`."""
    for row, (y, x, h, w), values in zip(rows, windows, part):
        into[row, :, y : y + h, x : x + w] = values
