"""The engine interface: one exported component, run by tensor name with its inputs checked
first. Every input is checked against the manifest before a backend sees it: its name, dtype,
rank, fixed sizes, and each dynamic dimension's range and agreement between tensors that share
it. A mismatch is an `EngineInputError` naming the tensor. A UNet's ControlNet residual inputs
may be left out: they are zeros then (sdrt.runtime.features.controlnet.residuals), as the graph's defaults are.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

import numpy as np

from sdrt.errors import SdrtError
from sdrt.runtime.features.controlnet.residuals import ZeroResiduals
from sdrt.runtime.manifest import ComponentSpec, DimRange


class EngineInputError(SdrtError):
    """An input does not fit the engine (wrong name, dtype or shape)."""


class EngineRunError(SdrtError):
    """The backend failed while running an engine (for example, out of memory)."""


class Engine(ABC):
    """A component engine: `run(feeds)` maps input names to arrays and returns outputs by name."""

    #: What `dims` are, for error messages.
    range_source = "exported range"
    #: Whether this engine keeps buffers on a device (then `last_copy_seconds` is measured).
    copies_to_device = False

    def __init__(self, name: str, spec: ComponentSpec, dims: Mapping[str, DimRange]):
        self.name = name
        self.spec = spec
        self.dims = dict(dims)
        self.inputs = {t.name: t for t in spec.inputs}
        self.output_names = [t.name for t in spec.outputs]
        self._zero_residuals = ZeroResiduals(spec, {t.name: np.dtype(t.dtype) for t in spec.inputs})

    def input_dtype(self, name: str) -> np.dtype:
        return np.dtype(self.inputs[name].dtype)

    @property
    def last_copy_seconds(self) -> float:
        """Host-device copy time of the calling thread's last run (0 for host engines)."""
        return 0.0

    def check(self, feeds: Mapping[str, np.ndarray]) -> dict[str, int]:
        """Validate feeds against the spec; returns the value of each dynamic dimension."""
        missing = sorted(set(self.inputs) - set(feeds))
        unknown = sorted(set(feeds) - set(self.inputs))
        if missing or unknown:
            raise EngineInputError(f"{self.name}: missing inputs {missing}, unknown inputs {unknown}")
        seen: dict[str, tuple[int, str]] = {}
        for name, spec in self.inputs.items():
            array = feeds[name]
            if array.dtype != np.dtype(spec.dtype):
                raise EngineInputError(f"{self.name}.{name}: dtype {array.dtype}, the engine takes {spec.dtype}")
            if array.ndim != len(spec.shape):
                raise EngineInputError(
                    f"{self.name}.{name}: shape {list(array.shape)} has rank {array.ndim}, "
                    f"the engine takes {spec.shape}"
                )
            for axis, (size, expected) in enumerate(zip(array.shape, spec.shape)):
                if isinstance(expected, int):
                    if size != expected:
                        raise EngineInputError(
                            f"{self.name}.{name}: axis {axis} is {size}, the engine takes {expected} "
                            f"(shape {spec.shape})"
                        )
                    continue
                _check_dim(self.name, name, expected, size, self.dims.get(expected), self.range_source)
                if expected in seen and seen[expected][0] != size:
                    other_size, other = seen[expected]
                    raise EngineInputError(f"{self.name}.{name}: {expected} is {size} but {other_size} in {other}")
                seen[expected] = (size, name)
        return {dim: size for dim, (size, _) in seen.items()}

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        zeros = self._zero_residuals
        if zeros and "sample" in feeds and any(name not in feeds for name in zeros.specs):
            sample = feeds["sample"]
            feeds = {**zeros.of(len(sample), *sample.shape[2:]), **feeds}
        return self._run(feeds, self.check(feeds))

    @abstractmethod
    def _run(self, feeds: Mapping[str, np.ndarray], dims: Mapping[str, int]) -> dict[str, np.ndarray]:
        """Run the checked feeds on the backend; `dims` holds each dynamic dimension's value."""


def _check_dim(engine: str, tensor: str, dim: str, size: int, valid: DimRange | None, source: str) -> None:
    if valid is None or valid.contains(size):
        return
    raise EngineInputError(
        f"{engine}.{tensor}: {dim} {size} is outside the {source} "
        f"{valid.min}..{valid.max}" + (f" in steps of {valid.multiple}" if valid.multiple > 1 else "")
    )
