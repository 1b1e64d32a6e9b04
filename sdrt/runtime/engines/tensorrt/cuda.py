"""TensorRT and cuda-python, imported on first use (without them the backend says what to
install in one line), and the few CUDA runtime calls sdrt makes, each checked."""

from __future__ import annotations

import resource
from collections.abc import Callable

import numpy as np

from sdrt.errors import SdrtError
from sdrt.runtime.engines.base import EngineRunError
from sdrt.runtime.engines.tensorrt.plan import Device

INSTALL_HINT = (
    "the tensorrt backend needs TensorRT >= 10 and cuda-python on a machine with an NVIDIA GPU: "
    "pip install 'sdrt[tensorrt]'"
)
MIB = 2**20


class BackendMissing(SdrtError):
    """TensorRT or cuda-python is not installed."""


class BuildError(SdrtError):
    """TensorRT could not parse or build an engine."""


def import_tensorrt():
    """(tensorrt, cuda runtime bindings), or BackendMissing naming what to install."""
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendMissing(f"{INSTALL_HINT} (tensorrt is missing)") from None
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise BackendMissing(f"{INSTALL_HINT} (cuda-python is missing)") from None
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise BackendMissing(f"{INSTALL_HINT} (found TensorRT {trt.__version__})")
    return trt, cudart


class Cuda:
    """The few CUDA runtime calls sdrt makes, each checked: a failure is an EngineRunError."""

    def __init__(self, cudart):
        self.rt = cudart

    def _check(self, result, what: str):
        error = result[0]
        if error != self.rt.cudaError_t.cudaSuccess:
            raise EngineRunError(f"CUDA {what} failed: {error}")
        return result[1] if len(result) == 2 else result[1:] or None

    def device(self, tensorrt_version: str) -> Device:
        index = self._check(self.rt.cudaGetDevice(), "cudaGetDevice")
        props = self._check(self.rt.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
        name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        return Device(str(tensorrt_version), name.rstrip("\x00").strip(), f"{props.major}.{props.minor}")

    def malloc(self, size: int) -> int:
        return int(self._check(self.rt.cudaMalloc(max(int(size), 1)), "cudaMalloc"))

    def free(self, pointer: int) -> None:
        self._check(self.rt.cudaFree(pointer), "cudaFree")

    def stream(self):
        return self._check(self.rt.cudaStreamCreate(), "cudaStreamCreate")

    def to_device(self, pointer: int, array: np.ndarray, stream) -> None:
        self._check(
            self.rt.cudaMemcpyAsync(
                pointer, array.ctypes.data, array.nbytes, self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream
            ),
            "cudaMemcpyAsync (host to device)",
        )

    def to_host(self, array: np.ndarray, pointer: int, stream) -> None:
        self._check(
            self.rt.cudaMemcpyAsync(
                array.ctypes.data, pointer, array.nbytes, self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream
            ),
            "cudaMemcpyAsync (device to host)",
        )

    def synchronize(self, stream) -> None:
        self._check(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def memory_in_use(self) -> int:
        free, total = self._check(self.rt.cudaMemGetInfo(), "cudaMemGetInfo")
        return int(total) - int(free)

    def capture(self, stream, enqueue: Callable[[], None]):
        """A CUDA graph of what `enqueue` puts on `stream`, instantiated."""
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._check(self.rt.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")
        try:
            enqueue()
        finally:
            graph = self._check(self.rt.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
        return self._check(self.rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")

    def launch(self, graph, stream) -> None:
        self._check(self.rt.cudaGraphLaunch(graph, stream), "cudaGraphLaunch")


def peak_host_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
