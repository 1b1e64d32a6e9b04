"""TensorRT engines at run time, with cuda-python for streams and device memory, no torch.
docs/tensorrt.md lists every TensorRT and CUDA call made in this package, with what it expects.
The pure parts live in profiles.py, plan.py (cache keys) and memory.py, builds in build.py.

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

import threading
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from sdrt.errors import SdrtError
from sdrt.runtime.engines.base import Engine, EngineRunError
from sdrt.runtime.engines.tensorrt.build import Builder, build_one, component_key
from sdrt.runtime.engines.tensorrt.cuda import Cuda, import_tensorrt
from sdrt.runtime.engines.tensorrt.memory import MemoryPlan, aligned, io_shapes, memory_plan
from sdrt.runtime.engines.tensorrt.plan import BuildSettings, plan_path, stale_reason
from sdrt.runtime.manifest import UNET, ComponentSpec, Manifest

CUDA_GRAPH_COMPONENTS = (UNET,)  # called once per step: where a graph pays off
NUMPY_DTYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64}


class TrtRuntime:
    """What the engines of one pipeline share: TensorRT's runtime, the CUDA stream, the
    activation memory block and the lock that keeps them from running at once."""

    def __init__(
        self,
        folder: Path,
        manifest: Manifest,
        settings: BuildSettings,
        progress: Callable[[str], None] | None = None,
        rebuild: bool = True,
    ):
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
        self.attached: dict[Path, TrtEngine] = {}  # engines of other folders (ControlNets), by folder

    def engine(self, component: str) -> TrtEngine:
        with self.lock:
            if component not in self.engines:
                self.engines[component] = TrtEngine(self, component)
            return self.engines[component]

    def attach(self, folder: Path, component: str, spec: ComponentSpec) -> TrtEngine:
        """The engine of another folder's component (a ControlNet), built with this model's
        settings and profile into that folder's tensorrt/ on first use, and kept."""
        with self.lock:
            if folder not in self.attached:
                self.attached[folder] = TrtEngine(self, component, folder, spec)
            return self.attached[folder]

    def deserialize(self, component: str, spec: ComponentSpec, folder: Path | None = None):
        folder = folder or self.folder
        key = component_key(component, spec, self.settings, self.device)
        reason = stale_reason(folder, key)
        if reason is not None:
            if not self.rebuild and folder == self.folder:
                raise SdrtError(f"{reason}: run `sdrt build {self.folder}`")
            self.progress(
                f"{component}: {'building' if folder != self.folder else 'rebuilding'} the TensorRT engine ({reason})"
            )
            build_one(Builder(self.trt, self.cuda, self.progress), folder, component, spec, key, self.settings)
        plan = plan_path(folder, key)
        engine = self.runtime.deserialize_cuda_engine(plan.read_bytes())
        if engine is None:
            raise SdrtError(
                f"TensorRT cannot load {plan} although its key matches; delete it and run `sdrt build {self.folder}`"
            )
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
                for engine in (*self.engines.values(), *self.attached.values()):
                    engine.bind_activations()
            return self.activation_pointer

    def memory(self) -> MemoryPlan:
        return memory_plan(
            self.manifest,
            self.settings.profile,
            list(self.engines),
            {name: engine.activation_need for name, engine in self.engines.items()},
        )


class TrtEngine(Engine):
    """One TensorRT engine, fed and read by name like every sdrt engine."""

    range_source = "range its TensorRT engine was built for (see `sdrt build --help`)"

    def __init__(
        self, runtime: TrtRuntime, component: str, folder: Path | None = None, spec: ComponentSpec | None = None
    ):
        manifest = runtime.manifest
        spec = spec or manifest.components[component]
        super().__init__(component, spec, runtime.settings.profile.dim_ranges(manifest))
        self.runtime = runtime
        trt = runtime.trt
        self.engine = runtime.deserialize(component, spec, folder)
        names = [self.engine.get_tensor_name(index) for index in range(self.engine.num_io_tensors)]
        expected = [t.name for t in spec.inputs + spec.outputs]
        if sorted(names) != sorted(expected):
            raise SdrtError(
                f"the {component} engine has tensors {sorted(names)}, the manifest {sorted(expected)}; "
                f"rebuild with `sdrt build {runtime.folder} --force`"
            )
        self.dtypes = {name: np.dtype(NUMPY_DTYPES[self.engine.get_tensor_dtype(name).name]) for name in names}
        for tensor in spec.inputs + spec.outputs:
            if self.dtypes[tensor.name] != np.dtype(tensor.dtype):
                raise SdrtError(
                    f"the {component} engine's {tensor.name} is {self.dtypes[tensor.name]}, the manifest "
                    f"says {tensor.dtype}; rebuild with `sdrt build {runtime.folder} --force`"
                )
        self.context = self.engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if self.context is None:
            raise EngineRunError(f"TensorRT could not create an execution context for {component}")
        self.activation_need = int(
            self.engine.device_memory_size_v2
            if hasattr(self.engine, "device_memory_size_v2")
            else self.engine.device_memory_size
        )  # TensorRT 10.0
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

    def refit(self, weights: Mapping[str, np.ndarray]) -> None:
        """Replaces weights by their ONNX initializer names (LoRA; sdrt.runtime.features.lora.variants)."""
        trt = self.runtime.trt
        with self.runtime.lock:
            self.runtime.cuda.synchronize(self.runtime.stream)  # nothing may run on the old weights
            refitter = trt.Refitter(self.engine, self.runtime.logger)
            arrays = {name: np.ascontiguousarray(array) for name, array in weights.items()}  # alive until refit
            for name, array in arrays.items():
                if not refitter.set_named_weights(name, trt.Weights(array)):
                    raise EngineRunError(
                        f"{self.name}: TensorRT cannot refit {name}; rebuild the engines with "
                        f"`sdrt build {self.runtime.folder} --force`"
                    )
            if not refitter.refit_cuda_engine():
                raise EngineRunError(f"{self.name}: TensorRT refit failed (see its log)")
            self._graph = None  # captured before the refit

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


def load_engines(
    folder: Path, manifest: Manifest, progress: Callable[[str], None] | None = None, rebuild: bool = True
) -> tuple[TrtRuntime, Manifest]:
    """The shared runtime for a model folder built with `sdrt build`, and the manifest with its
    dimension ranges narrowed to the built profile (so size and batch checks name what the
    engines accept)."""
    from dataclasses import replace

    settings = BuildSettings.load(folder)
    narrowed = replace(manifest, dims=settings.profile.dim_ranges(manifest))
    return TrtRuntime(folder, narrowed, settings, progress, rebuild), narrowed
