"""The device memory plan of a loaded TensorRT pipeline: IO buffers at the profile's largest
shapes, and one activation block shared by every engine."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from sdrt.runtime.engines.tensorrt.profiles import Profile
from sdrt.runtime.manifest import ComponentSpec, Manifest

#: CUDA allocations are aligned to 256 bytes; the plan rounds each buffer up to it.
DEVICE_ALIGNMENT = 256
DTYPE_BYTES = {"float32": 4, "float16": 2, "int32": 4, "int64": 8}


def aligned(size: int) -> int:
    return -(-size // DEVICE_ALIGNMENT) * DEVICE_ALIGNMENT


def tensor_bytes(dtype: str, shape: list[int]) -> int:
    return DTYPE_BYTES[dtype] * math.prod(shape)


def io_shapes(spec: ComponentSpec, values: Mapping[str, int]) -> dict[str, list[int]]:
    """Concrete shapes of a component's inputs and outputs for the given dimension values."""
    return {
        t.name: [size if isinstance(size, int) else int(values[size]) for size in t.shape]
        for t in spec.inputs + spec.outputs
    }


@dataclass(frozen=True)
class MemoryPlan:
    """Device memory of a loaded TensorRT pipeline. IO buffers are allocated once, at the
    profile's largest shapes, and reused for every smaller request; the engines' activation
    memory is one block the size of the largest need (they never run at once), instead of one
    block each."""

    io_bytes: dict[str, int]  # per component, all its inputs and outputs
    activation_bytes: dict[str, int]  # per component, as the engine reports it
    shared_activation_bytes: int

    @property
    def total_bytes(self) -> int:
        return sum(self.io_bytes.values()) + self.shared_activation_bytes

    @property
    def saved_bytes(self) -> int:
        """What sharing saves over one activation block per engine."""
        return sum(self.activation_bytes.values()) - self.shared_activation_bytes


def memory_plan(
    manifest: Manifest, profile: Profile, components: list[str], activation_bytes: Mapping[str, int]
) -> MemoryPlan:
    largest = {name: high for name, (_, _, high) in profile.dims.items()}
    io = {}
    for component in components:
        spec = manifest.components[component]
        shapes = io_shapes(spec, largest)
        dtypes = {t.name: t.dtype for t in spec.inputs + spec.outputs}
        io[component] = sum(aligned(tensor_bytes(dtypes[name], shape)) for name, shape in shapes.items())
    activations = {component: int(activation_bytes.get(component, 0)) for component in components}
    return MemoryPlan(io, activations, aligned(max(activations.values(), default=0)))
