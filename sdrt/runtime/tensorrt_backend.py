"""The TensorRT backend: engine builds (`sdrt build`) and engines that run them, with
cuda-python for streams and device memory, no torch.

TensorRT and cuda-python are imported on first use; without them the backend says what to
install in one line. docs/tensorrt.md lists every TensorRT and CUDA call made here, with what
it expects. The pure parts (profiles, cache keys, memory plan) live in tensorrt_plan.py.

Runtime design:
- one CUDA stream for the pipeline; the engines run one at a time under one lock (a pipeline
  shared by threads serializes on the GPU anyway);
- every IO buffer is allocated once, at the profile's largest shape, and bound once
  (set_tensor_address); a request only sets its input shapes;
- the engines' activation memory is one block, the size of the largest engine's need, given to
  every context (created with user-managed device memory), because they never run at once;
- the UNet call is captured in a CUDA graph per input shape when the profile is static, and
  replayed on later steps; a shape change re-captures.
"""

from __future__ import annotations

import json
import os
import resource
import threading
import time
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from sdrt.errors import SdrtError
from sdrt.runtime.engine import Engine, EngineRunError
from sdrt.runtime.manifest import ComponentSpec, Manifest
from sdrt.runtime.tensorrt_plan import (
    BuildSettings,
    Device,
    EngineKey,
    MemoryPlan,
    aligned,
    component_precision,
    io_shapes,
    key_path,
    memory_plan,
    plan_path,
    stale_reason,
)

INSTALL_HINT = ("the tensorrt backend needs TensorRT >= 10 and cuda-python on a machine with an NVIDIA GPU: "
                "pip install 'sdrt[tensorrt]'")
TIMING_CACHE = "timing.cache"
CUDA_GRAPH_COMPONENTS = ("unet",)  # called once per step: where a graph pays off
NUMPY_DTYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64}
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
        self._check(self.rt.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes,
                                            self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream),
                    "cudaMemcpyAsync (host to device)")

    def to_host(self, array: np.ndarray, pointer: int, stream) -> None:
        self._check(self.rt.cudaMemcpyAsync(array.ctypes.data, pointer, array.nbytes,
                                            self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream),
                    "cudaMemcpyAsync (device to host)")

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


# ---------------------------------------------------------------- build
def component_key(component: str, spec: ComponentSpec, settings: BuildSettings, device: Device) -> EngineKey:
    precision = component_precision(component, spec, settings.precision)
    return EngineKey.of(component, spec, settings.profile, precision, device, settings.builder())


def build_engines(folder: str | Path, settings: BuildSettings, progress: Callable[[str], None] = print,
                  force: bool = False) -> dict[str, Path]:
    """Builds (or keeps, when still valid) one engine per component, saves build.json, and
    returns the engine files. The timing cache in tensorrt/timing.cache is read and updated."""
    trt, cudart = import_tensorrt()
    folder = Path(folder)
    manifest = Manifest.load(folder)
    cuda = Cuda(cudart)
    device = cuda.device(trt.__version__)
    components = [name for name in settings.components if name in manifest.components]
    plans = {}
    for component in components:
        spec = manifest.components[component]
        key = component_key(component, spec, settings, device)
        reason = "--force" if force else stale_reason(folder, key)
        plan = plan_path(folder, key)
        if reason is None:
            progress(f"{component}: up to date ({plan.name})")
        else:
            progress(f"{component}: building ({reason})")
            build_one(trt, cuda, folder, component, spec, key, settings, progress)
        plans[component] = plan
    settings.save(folder)
    return plans


def build_one(trt, cuda: Cuda, folder: Path, component: str, spec: ComponentSpec, key: EngineKey,
              settings: BuildSettings, progress: Callable[[str], None]) -> Path:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = spec.precision == "fp16"
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if hasattr(trt, "OnnxParserFlag") and hasattr(trt.OnnxParserFlag, "NATIVE_INSTANCENORM"):
        parser.set_flag(trt.OnnxParserFlag.NATIVE_INSTANCENORM)  # GroupNorm as one normalization layer
    onnx_file = folder / spec.file
    if not parser.parse_from_file(str(onnx_file)):
        errors = "; ".join(str(parser.get_error(index)) for index in range(parser.num_errors))
        raise BuildError(f"TensorRT cannot parse {onnx_file}: {errors or 'unknown error'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    if key.precision == "fp16" and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
        kept = keep_fp32_layers(trt, network)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        progress(f"{component}: fp16, {kept} normalization/softmax/reduction layers kept in fp32")
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in settings.profile.shapes(spec).items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    cache_file = plan_path(folder, key).parent / TIMING_CACHE
    cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    monitor = make_progress_monitor(trt, component, progress)
    if monitor is not None:
        config.progress_monitor = monitor
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildError(f"TensorRT could not build {component} (see its log above); "
                         "a smaller --max size or --max-batch, or more --workspace, may help")
    plan = plan_path(folder, key)
    plan.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(plan, memoryview(serialized))
    write_atomically(cache_file, memoryview(config.get_timing_cache().serialize()))
    record = {"key": key.to_json(), "plan_bytes": plan.stat().st_size,
              "built_seconds": round(time.perf_counter() - started, 1)}
    write_atomically(key_path(plan), (json.dumps(record, indent=2) + "\n").encode())
    progress(f"{component}: built {plan.name} ({plan.stat().st_size / MIB:.0f} MiB) in "
             f"{record['built_seconds']:.0f} s; peak host memory {peak_host_mib():.0f} MiB, GPU memory in use "
             f"{cuda.memory_in_use() / MIB:.0f} MiB")
    return plan


def keep_fp32_layers(trt, network) -> int:
    """Pins normalization, softmax and reduction layers (and their outputs) to fp32 in an fp16
    build: their sums and variances lose accuracy in fp16 and show up as image artefacts."""
    pinned = {trt.LayerType.NORMALIZATION, trt.LayerType.SOFTMAX, trt.LayerType.REDUCE}
    count = 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type in pinned:
            layer.precision = trt.float32
            for output in range(layer.num_outputs):
                layer.set_output_type(output, trt.float32)
            count += 1
    return count


def make_progress_monitor(trt, component: str, progress: Callable[[str], None]):
    """An IProgressMonitor that reports top-level build phases with elapsed time and memory."""
    if not hasattr(trt, "IProgressMonitor"):
        return None
    started = time.perf_counter()

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.steps: dict[str, int] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.steps[phase_name] = num_steps
            if parent_phase is None:
                progress(f"{component}: {phase_name} ({time.perf_counter() - started:.0f} s, "
                         f"peak host {peak_host_mib():.0f} MiB)")

        def step_complete(self, phase_name, step):
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            self.steps.pop(phase_name, None)

    return Monitor()


def write_atomically(path: Path, data) -> None:
    temporary = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(temporary, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


# ---------------------------------------------------------------- run
class TrtRuntime:
    """What the engines of one pipeline share: TensorRT's runtime, the CUDA stream, the
    activation memory block and the lock that keeps them from running at once."""

    def __init__(self, folder: Path, manifest: Manifest, settings: BuildSettings,
                 progress: Callable[[str], None] | None = None, rebuild: bool = True):
        self.trt, cudart = import_tensorrt()
        self.cuda = Cuda(cudart)
        self.folder, self.manifest, self.settings = Path(folder), manifest, settings
        self.progress = progress or (lambda line: None)
        self.rebuild = rebuild
        self.device = self.cuda.device(self.trt.__version__)
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        self.runtime = self.trt.Runtime(self.logger)
        self.stream = self.cuda.stream()
        self.lock = threading.RLock()
        self.activation_pointer = 0
        self.activation_bytes = 0
        self.engines: dict[str, TrtEngine] = {}

    def engine(self, component: str) -> "TrtEngine":
        with self.lock:
            if component not in self.engines:
                self.engines[component] = TrtEngine(self, component)
            return self.engines[component]

    def deserialize(self, component: str, spec: ComponentSpec):
        key = component_key(component, spec, self.settings, self.device)
        reason = stale_reason(self.folder, key)
        if reason is not None:
            if not self.rebuild:
                raise SdrtError(f"{reason}: run `sdrt build {self.folder}`")
            self.progress(f"{component}: rebuilding the TensorRT engine ({reason})")
            build_one(self.trt, self.cuda, self.folder, component, spec, key, self.settings, self.progress)
        plan = plan_path(self.folder, key)
        engine = self.runtime.deserialize_cuda_engine(plan.read_bytes())
        if engine is None:
            raise SdrtError(f"TensorRT cannot load {plan} although its key matches; delete it and run "
                            f"`sdrt build {self.folder}`")
        return engine

    def share_activations(self, size: int) -> int:
        """The shared activation block, grown (and rebound to every context) when an engine
        needs more than the block has."""
        with self.lock:
            if size > self.activation_bytes:
                if self.activation_pointer:
                    self.cuda.synchronize(self.stream)
                    self.cuda.free(self.activation_pointer)
                self.activation_bytes = aligned(size)
                self.activation_pointer = self.cuda.malloc(self.activation_bytes)
                for engine in self.engines.values():
                    engine.bind_activations()
            return self.activation_pointer

    def memory(self) -> MemoryPlan:
        return memory_plan(self.manifest, self.settings.profile, list(self.engines),
                           {name: engine.activation_need for name, engine in self.engines.items()})


class TrtEngine(Engine):
    """One TensorRT engine, fed and read by name like every sdrt engine."""

    range_source = "range its TensorRT engine was built for (see `sdrt build --help`)"

    def __init__(self, runtime: TrtRuntime, component: str):
        manifest = runtime.manifest
        spec = manifest.components[component]
        super().__init__(component, spec, runtime.settings.profile.dim_ranges(manifest))
        self.runtime = runtime
        trt = runtime.trt
        self.engine = runtime.deserialize(component, spec)
        names = [self.engine.get_tensor_name(index) for index in range(self.engine.num_io_tensors)]
        expected = [t.name for t in spec.inputs + spec.outputs]
        if sorted(names) != sorted(expected):
            raise SdrtError(f"the {component} engine has tensors {sorted(names)}, the manifest {sorted(expected)}; "
                            f"rebuild with `sdrt build {runtime.folder} --force`")
        self.dtypes = {name: np.dtype(NUMPY_DTYPES[self.engine.get_tensor_dtype(name).name]) for name in names}
        for tensor in spec.inputs + spec.outputs:
            if self.dtypes[tensor.name] != np.dtype(tensor.dtype):
                raise SdrtError(f"the {component} engine's {tensor.name} is {self.dtypes[tensor.name]}, the manifest "
                                f"says {tensor.dtype}; rebuild with `sdrt build {runtime.folder} --force`")
        self.context = self.engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if self.context is None:
            raise EngineRunError(f"TensorRT could not create an execution context for {component}")
        self.activation_need = int(self.engine.device_memory_size_v2 if hasattr(self.engine, "device_memory_size_v2")
                                   else self.engine.device_memory_size)  # TensorRT 10.0
        # IO buffers at the profile's largest shapes, bound once.
        largest = {name: high for name, (_, _, high) in runtime.settings.profile.dims.items()}
        self.buffers: dict[str, int] = {}
        for name, shape in io_shapes(spec, largest).items():
            self.buffers[name] = runtime.cuda.malloc(aligned(self.dtypes[name].itemsize * int(np.prod(shape))))
            self.context.set_tensor_address(name, self.buffers[name])
        runtime.share_activations(self.activation_need)
        self.bind_activations()
        self.use_graphs = runtime.settings.profile.static and component in CUDA_GRAPH_COMPONENTS
        self._graph = None
        self._graph_shapes: tuple | None = None
        self._shapes: dict[str, tuple[int, ...]] = {}

    def bind_activations(self) -> None:
        pointer, size = self.runtime.activation_pointer, self.runtime.activation_bytes
        if hasattr(self.context, "set_device_memory"):  # TensorRT >= 10.1
            self.context.set_device_memory(pointer, size)
        else:
            self.context.device_memory = pointer
        self._graph = None  # a captured graph holds the old addresses

    def input_dtype(self, name: str) -> np.dtype:
        return self.dtypes[name]

    def _run(self, feeds: Mapping[str, np.ndarray], dims: Mapping[str, int]) -> dict[str, np.ndarray]:
        runtime, cuda, stream = self.runtime, self.runtime.cuda, self.runtime.stream
        with runtime.lock:
            for name, array in feeds.items():
                array = np.ascontiguousarray(array)
                if self._shapes.get(name) != array.shape:
                    if not self.context.set_input_shape(name, array.shape):
                        raise EngineRunError(f"{self.name}: TensorRT refused shape {list(array.shape)} for {name}")
                    self._shapes[name] = array.shape
                cuda.to_device(self.buffers[name], array, stream)
            self._execute(tuple(sorted(self._shapes.items())))
            outputs = {}
            for name in self.output_names:
                array = np.empty(tuple(self.context.get_tensor_shape(name)), dtype=self.dtypes[name])
                cuda.to_host(array, self.buffers[name], stream)
                outputs[name] = array
            cuda.synchronize(stream)
        return outputs

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(int(self.runtime.stream)):
            raise EngineRunError(f"{self.name}: TensorRT execution failed (see its log)")

    def _execute(self, shapes: tuple) -> None:
        if not self.use_graphs:
            self._enqueue()
            return
        if self._graph is not None and self._graph_shapes == shapes:
            self.runtime.cuda.launch(self._graph, self.runtime.stream)
            return
        # TensorRT needs one ordinary call after a shape change before it can be captured.
        self._enqueue()
        self._graph = self.runtime.cuda.capture(self.runtime.stream, self._enqueue)
        self._graph_shapes = shapes


def load_engines(folder: Path, manifest: Manifest, progress: Callable[[str], None] | None = None,
                 rebuild: bool = True) -> tuple[TrtRuntime, Manifest]:
    """The shared runtime for a model folder built with `sdrt build`, and the manifest with its
    dimension ranges narrowed to the built profile (so size and batch checks name what the
    engines accept)."""
    from dataclasses import replace

    settings = BuildSettings.load(folder)
    narrowed = replace(manifest, dims=settings.profile.dim_ranges(manifest))
    return TrtRuntime(folder, narrowed, settings, progress, rebuild), narrowed
