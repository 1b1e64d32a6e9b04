"""Zero ControlNet residuals for a UNet exported with residual inputs: what it gets when no
ControlNet guides a call (adding zero leaves its output exactly as without the inputs)."""

from __future__ import annotations

import threading

import numpy as np

from sdrt.runtime.manifest import (
    LATENT_HEIGHT,
    LATENT_WIDTH,
    UNET_BATCH,
    ComponentSpec,
    residual_names,
    split_downsampled,
)

#: Shapes whose zeros are kept (a server sees a few sizes and batches; the oldest go first).
KEPT_SHAPES = 8


def dim_size(name: str, sizes: dict[str, int]) -> int:
    """The size of a dimension named `downsampled(dim, factor)` (or a plain name) in `sizes`."""
    base, factor = split_downsampled(name)
    return sizes[base] // factor


class ZeroResiduals:
    """Zero residuals for a UNet's residual inputs, made once per shape and read-only (a device
    engine then uploads them once)."""

    def __init__(self, spec: ComponentSpec, dtypes: dict[str, np.dtype]):
        by_name = {t.name: t for t in spec.inputs}
        self.specs = {name: by_name[name] for name in residual_names(spec) if name in by_name}  # inputs, in order
        self.dtypes = dtypes
        self._made: dict[tuple, dict[str, np.ndarray]] = {}
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self.specs)

    def of(self, rows: int, latent_h: int, latent_w: int) -> dict[str, np.ndarray]:
        key = (rows, latent_h, latent_w)
        with self._lock:  # engines run from several threads (a server's workers)
            return self._zeros(key)

    def _zeros(self, key: tuple[int, int, int]) -> dict[str, np.ndarray]:
        rows, latent_h, latent_w = key
        if key not in self._made:
            sizes = {UNET_BATCH: rows, LATENT_HEIGHT: latent_h, LATENT_WIDTH: latent_w}
            made = {}
            for name, spec in self.specs.items():
                shape = [size if isinstance(size, int) else dim_size(size, sizes) for size in spec.shape]
                made[name] = np.zeros(shape, self.dtypes[name])
                made[name].flags.writeable = False
            self._made[key] = made
            while len(self._made) > KEPT_SHAPES:
                self._made.pop(next(iter(self._made)))
        return self._made[key]
