"""A stand-in for TensorRT 10 and cuda-python's runtime, for machines without them.

It is strict where sdrt's backend could go wrong: names, shapes against the optimization
profile, addresses bound before execution, user-managed activation memory present and large
enough, integer stream handles, one ordinary call before CUDA graph capture, and capture that
records instead of running. "Device" memory is host memory (pointers are real addresses, so
cudaMemcpyAsync is a memmove), and an engine computes with ONNX Runtime on the ONNX file it was
"built" from, so results can be compared with the CPU path. It knows nothing of TensorRT's
numerics: fp16 behaviour is not simulated.
"""

from __future__ import annotations

import ctypes
import enum
import json
import math
import types
from pathlib import Path

import numpy as np

DEVICE_NAME = "Fake GPU"
ACTIVATION_BYTES = {"text_encoder": 3 << 20, "unet": 40 << 20, "vae_decoder": 24 << 20, "vae_encoder": 16 << 20}
ONNX_TYPES = {"tensor(float)": "FLOAT", "tensor(float16)": "HALF", "tensor(int32)": "INT32", "tensor(int64)": "INT64"}
NUMPY = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64}


class Stats:
    """What the fakes saw, for assertions."""

    def __init__(self):
        self.builds: list[dict] = []
        self.executions: dict[str, int] = {}
        self.graph_launches = 0
        self.captures = 0
        self.refits: list[dict] = []  # {"component", "names"} per successful refit
        self.allocated: dict[int, np.ndarray] = {}


# ---------------------------------------------------------------- cuda runtime
def make_cudart(stats: Stats, device_name: str = DEVICE_NAME, capability: tuple[int, int] = (9, 0)) -> types.ModuleType:
    rt = types.ModuleType("cuda.bindings.runtime")
    rt.capability = capability

    class cudaError_t(enum.IntEnum):
        cudaSuccess = 0
        cudaErrorInvalidValue = 1
        cudaErrorStreamCaptureUnsupported = 900

    class cudaMemcpyKind(enum.IntEnum):
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    class cudaStreamCaptureMode(enum.IntEnum):
        cudaStreamCaptureModeGlobal = 0
        cudaStreamCaptureModeThreadLocal = 1

    class Stream:
        def __init__(self):
            self.recording: list | None = None

        def __int__(self):
            return id(self)

    streams: dict[int, Stream] = {}
    ok = cudaError_t.cudaSuccess

    def cudaMalloc(size):
        buffer = np.zeros(int(size) + 256, dtype=np.uint8)
        address = buffer.ctypes.data
        stats.allocated[address] = buffer
        return ok, address

    def cudaFree(pointer):
        if stats.allocated.pop(int(pointer), None) is None:
            return (cudaError_t.cudaErrorInvalidValue,)
        return (ok,)

    def cudaStreamCreate():
        stream = Stream()
        streams[int(stream)] = stream
        return ok, stream

    def cudaMemcpyAsync(dst, src, count, kind, stream):
        assert isinstance(stream, Stream) and stream.recording is None, "copies are not captured"
        assert kind in (cudaMemcpyKind.cudaMemcpyHostToDevice, cudaMemcpyKind.cudaMemcpyDeviceToHost)
        ctypes.memmove(int(dst), int(src), int(count))
        return (ok,)

    def cudaStreamSynchronize(stream):
        assert isinstance(stream, Stream)
        return (ok,)

    def cudaGetDevice():
        return ok, 0

    def cudaGetDeviceProperties(index):
        return ok, types.SimpleNamespace(
            name=device_name.encode() + b"\x00" * 8, major=capability[0], minor=capability[1]
        )

    def cudaMemGetInfo():
        used = sum(buffer.nbytes for buffer in stats.allocated.values())
        return ok, 80 * 2**30 - used, 80 * 2**30

    def cudaStreamBeginCapture(stream, mode):
        assert stream.recording is None
        stream.recording = []
        return (ok,)

    def cudaStreamEndCapture(stream):
        recorded, stream.recording = stream.recording, None
        stats.captures += 1
        return ok, ("graph", tuple(recorded))

    def cudaGraphInstantiate(graph, flags):
        assert graph[0] == "graph" and flags == 0
        return ok, ("exec", graph[1])

    def cudaGraphLaunch(graph_exec, stream):
        assert graph_exec[0] == "exec" and stream.recording is None
        stats.graph_launches += 1
        for operation in graph_exec[1]:
            operation()
        return (ok,)

    for name, value in list(locals().items()):
        if name.startswith("cuda"):
            setattr(rt, name, value)
    rt.streams = streams
    return rt


# ---------------------------------------------------------------- tensorrt
def _qdq_types(model) -> set[str]:
    """The element types the graph's QuantizeLinear nodes produce (their zero point's type)."""
    import onnx

    initializers = {t.name: t for t in model.graph.initializer}
    types_ = set()
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) > 2 and node.input[2] in initializers:
            types_.add(onnx.helper.tensor_dtype_to_np_dtype(initializers[node.input[2]].data_type).name)
    return types_


def make_tensorrt(stats: Stats, cudart: types.ModuleType, version: str = "10.9.0") -> types.ModuleType:
    import onnx
    import onnxruntime as ort

    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    cudart_capability = cudart.capability

    class DataType(enum.Enum):
        FLOAT = 0
        HALF = 1
        INT32 = 3
        INT64 = 4

    trt.DataType = DataType
    trt.float32, trt.float16 = DataType.FLOAT, DataType.HALF
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level=2: None})
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 5})
    trt.BuilderFlag = enum.Enum("BuilderFlag", "FP16 INT8 FP8 OBEY_PRECISION_CONSTRAINTS TF32 REFIT REFIT_INDIVIDUAL")
    trt.MemoryPoolType = enum.Enum("MemoryPoolType", "WORKSPACE")
    trt.OnnxParserFlag = enum.Enum("OnnxParserFlag", "NATIVE_INSTANCENORM")
    trt.LayerType = enum.Enum("LayerType", "NORMALIZATION SOFTMAX REDUCE CONVOLUTION OTHER")
    trt.ExecutionContextAllocationStrategy = enum.Enum(
        "ExecutionContextAllocationStrategy", "STATIC ON_PROFILE_CHANGE USER_MANAGED"
    )
    layer_types = {
        "LayerNormalization": "NORMALIZATION",
        "InstanceNormalization": "NORMALIZATION",
        "GroupNormalization": "NORMALIZATION",
        "Softmax": "SOFTMAX",
        "ReduceMean": "REDUCE",
        "Conv": "CONVOLUTION",
    }

    class IProgressMonitor:
        def __init__(self):
            self._initialized = True

    trt.IProgressMonitor = IProgressMonitor

    class Layer:
        def __init__(self, op_type):
            self.type = trt.LayerType[layer_types.get(op_type, "OTHER")]
            self.precision = None
            self.num_outputs = 1
            self.output_types = {}

        def set_output_type(self, index, dtype):
            assert 0 <= index < self.num_outputs and dtype in DataType
            self.output_types[index] = dtype

    class Network:
        def __init__(self, flags):
            self.flags = flags
            self.layers: list[Layer] = []
            self.onnx_path = None  # the graph parsed (a copy without input defaults, when sdrt passes bytes)
            self.source_path = None  # the model's file, when sdrt parsed a copy of it
            self.weights: dict[str, tuple] = {}  # initializer -> (shape, dtype)
            self.refittable: set[str] = set()
            self.qdq_types: set[str] = set()  # the element types of the graph's QuantizeLinear outputs

        def mark_weights_refittable(self, name):
            if name not in self.weights:
                return False
            self.refittable.add(name)
            return True

        @property
        def num_layers(self):
            return len(self.layers)

        def get_layer(self, index):
            return self.layers[index]

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            self.flags = set()
            self.num_errors = 0

        def set_flag(self, flag):
            self.flags.add(flag)

        def parse_from_file(self, path):
            model = onnx.load(path, load_external_data=False)
            inputs = {tensor.name for tensor in model.graph.input}
            # As TensorRT does: an input with an initializer is a constant, never an engine input.
            self.network.constant_inputs = sorted(t.name for t in model.graph.initializer if t.name in inputs)
            self.network.layers = [Layer(node.op_type) for node in model.graph.node]
            self.network.qdq_types = _qdq_types(model)
            self.network.onnx_path = path
            self.network.weights = {
                t.name: (tuple(t.dims), onnx.helper.tensor_dtype_to_np_dtype(t.data_type))
                for t in model.graph.initializer
                if t.name not in inputs
            }
            return True

        def parse(self, model_bytes, path=None):
            """The model from memory; `path` locates its external data (the graph written beside it)."""
            assert path is not None, "sdrt passes the ONNX file's path for its external weights"
            copy = Path(path).with_name(Path(path).stem + f".parsed-{len(stats.builds)}.onnx")
            copy.write_bytes(bytes(model_bytes))
            parsed = self.parse_from_file(str(copy))
            self.network.source_path = str(path)
            return parsed

        def get_error(self, index):
            raise IndexError(index)

    class OptimizationProfile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, low, opt, high):
            assert len(low) == len(opt) == len(high), name
            assert all(a <= b <= c for a, b, c in zip(low, opt, high)), (name, low, opt, high)
            self.shapes[name] = [list(low), list(opt), list(high)]

    class TimingCache:
        def __init__(self, data: bytes):
            self.entries = json.loads(data.decode()) if data else []

        def serialize(self):
            return json.dumps(self.entries).encode()

    class BuilderConfig:
        def __init__(self):
            self.flags, self.profiles, self.pool = set(), [], {}
            self.cache = None
            self.progress_monitor = None

        def set_memory_pool_limit(self, pool, size):
            self.pool[pool] = size

        def set_flag(self, flag):
            self.flags.add(flag)

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, data):
            assert isinstance(data, (bytes, bytearray))
            return TimingCache(bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return Network(flags)

        def create_builder_config(self):
            return BuilderConfig()

        def create_optimization_profile(self):
            return OptimizationProfile()

        def build_serialized_network(self, network, config):
            assert network.onnx_path and len(config.profiles) == 1 and config.cache is not None
            strongly = bool(network.flags & (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
            assert not (strongly and trt.BuilderFlag.FP16 in config.flags), "strongly typed networks take no FP16 flag"
            pinned = [layer for layer in network.layers if layer.precision is not None]
            # Explicit quantization (TensorRT's "Working with Quantized Types"): a weakly typed network
            # with Q/DQ layers needs the flag of their type (INT8, FP8); such a flag without Q/DQ layers
            # asks for implicit int8 calibration, which sdrt never does.
            quantized = {trt.BuilderFlag.INT8: "int8", trt.BuilderFlag.FP8: "float8_e4m3fn"}
            for flag, dtype in quantized.items():
                if dtype in network.qdq_types:
                    assert strongly or flag in config.flags, (
                        f"a {dtype} Q/DQ network built without BuilderFlag.{flag.name}"
                    )
                else:
                    assert flag not in config.flags, f"BuilderFlag.{flag.name} on a network without {dtype} Q/DQ layers"
            assert not (strongly and network.qdq_types and config.flags & set(quantized)), (
                "strongly typed: no INT8/FP8 flag"
            )
            assert network.qdq_types <= set(quantized.values()), network.qdq_types
            assert "float8_e4m3fn" not in network.qdq_types or cudart_capability >= (8, 9), "FP8 needs SM 8.9+"
            if trt.BuilderFlag.FP16 in config.flags:
                assert pinned and trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS in config.flags
            monitor = config.progress_monitor
            if monitor is not None:
                assert getattr(monitor, "_initialized", False), "IProgressMonitor.__init__ was not called"
                monitor.phase_start("Building engine", None, 2)
                assert monitor.step_complete("Building engine", 0) is True
                monitor.phase_finish("Building engine")
            config.cache.entries.append(network.onnx_path)
            individual = trt.BuilderFlag.REFIT_INDIVIDUAL in config.flags
            assert not (individual and trt.BuilderFlag.REFIT in config.flags), "one refit mode"
            assert not (network.refittable and not individual), "marked weights need REFIT_INDIVIDUAL"
            refittable = (
                sorted(network.refittable)
                if individual
                else (sorted(network.weights) if trt.BuilderFlag.REFIT in config.flags else [])
            )
            record = {
                "onnx": network.source_path or network.onnx_path,
                "graph": network.onnx_path,
                "profile": config.profiles[0].shapes,
                "refittable": {
                    name: [list(network.weights[name][0]), np.dtype(network.weights[name][1]).name]
                    for name in refittable
                },
                "fp16": trt.BuilderFlag.FP16 in config.flags,
                "int8": trt.BuilderFlag.INT8 in config.flags,
                "fp8": trt.BuilderFlag.FP8 in config.flags,
                "qdq_types": sorted(network.qdq_types),
                "strongly_typed": strongly,
                "pinned_fp32": len(pinned),
                "version": version,
                "device": DEVICE_NAME,
            }
            stats.builds.append(record)
            return json.dumps(record).encode()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            try:
                record = json.loads(bytes(data).decode())
            except (UnicodeDecodeError, json.JSONDecodeError):
                return None
            if record.get("version") != version:
                return None
            return Engine(record)

    class Weights:
        def __init__(self, array):
            assert isinstance(array, np.ndarray) and array.flags.c_contiguous, "Weights take contiguous arrays"
            self.array = array

    class Refitter:
        """Refits the fake engine: its ONNX Runtime session is remade with the new weights as
        initializer overrides (the engine's current weights are kept for assertions)."""

        def __init__(self, engine, logger):
            assert isinstance(engine, Engine)
            self.engine = engine
            self.pending: dict[str, np.ndarray] = {}

        def set_named_weights(self, name, weights):
            spec = self.engine.record["refittable"].get(name)
            if spec is None or list(weights.array.shape) != spec[0] or weights.array.dtype.name != spec[1]:
                return False
            self.pending[name] = weights.array.copy()  # TensorRT copies at refit; the caller may free after
            return True

        def refit_cuda_engine(self):
            assert self.pending, "a refit with no weights"
            self.engine.weights.update(self.pending)
            self.engine.open_session()
            stats.refits.append({"component": self.engine.component, "names": sorted(self.pending)})
            self.pending = {}
            return True

    trt.Weights, trt.Refitter = Weights, Refitter

    class Engine:
        def __init__(self, record):
            self.record = record
            self.weights: dict[str, np.ndarray] = {}  # refitted weights, by name
            self.open_session()
            self.inputs = {arg.name: arg for arg in self.session.get_inputs()}
            self.outputs = {arg.name: arg for arg in self.session.get_outputs()}
            self.names = [*self.inputs, *self.outputs]
            self.output_shapes: dict = {}
            component = record["onnx"].replace("\\", "/").split("/")[-2]
            self.component = component
            self.device_memory_size_v2 = ACTIVATION_BYTES.get(component, 1 << 20)

        def open_session(self):
            options = ort.SessionOptions()
            options.log_severity_level = 3
            self._kept = [ort.OrtValue.ortvalue_from_numpy(array) for array in self.weights.values()]
            for name, value in zip(self.weights, self._kept):
                options.add_initializer(name, value)
            # ONNX Runtime's NCHWc transform would ignore replaced convolution weights.
            disabled = {"disabled_optimizers": ["NchwcTransformer"]} if self.weights else {}
            self.session = ort.InferenceSession(
                self.record["graph"], options, providers=["CPUExecutionProvider"], **disabled
            )

        @property
        def num_io_tensors(self):
            return len(self.names)

        def get_tensor_name(self, index):
            return self.names[index]

        def get_tensor_dtype(self, name):
            arg = self.inputs.get(name) or self.outputs[name]
            return DataType[ONNX_TYPES[arg.type]]

        def create_execution_context(self, strategy):
            assert strategy == trt.ExecutionContextAllocationStrategy.USER_MANAGED
            return Context(self)

    class Context:
        def __init__(self, engine):
            self.engine = engine
            self.shapes: dict[str, tuple] = {}
            self.addresses: dict[str, int] = {}
            self.device_memory = None
            self.device_memory_bytes = 0

        def set_device_memory(self, pointer, size):
            assert isinstance(pointer, int) and isinstance(size, int)
            self.device_memory, self.device_memory_bytes = pointer, size

        def set_tensor_address(self, name, pointer):
            assert name in self.engine.names and isinstance(pointer, int), name
            self.addresses[name] = pointer
            return True

        def set_input_shape(self, name, shape):
            assert name in self.engine.inputs, name
            low, _, high = self.engine.record["profile"][name]
            shape = tuple(int(s) for s in shape)
            if len(shape) != len(low) or not all(a <= s <= b for a, s, b in zip(low, shape, high)):
                return False
            self.shapes[name] = shape
            return True

        def get_tensor_shape(self, name):
            """Output shapes follow from the input shapes (found by running zeros once per shape
            set, as TensorRT's shape inference would know them)."""
            if name in self.engine.inputs:
                return self.shapes[name]
            key = tuple(sorted(self.shapes.items()))
            if key not in self.engine.output_shapes:
                feeds = {
                    n: np.zeros(self.shapes[n], NUMPY[ONNX_TYPES[arg.type]]) for n, arg in self.engine.inputs.items()
                }
                results = self.engine.session.run(list(self.engine.outputs), feeds)
                self.engine.output_shapes[key] = {n: tuple(r.shape) for n, r in zip(self.engine.outputs, results)}
            return self.engine.output_shapes[key][name]

        def execute_async_v3(self, stream_handle):
            assert isinstance(stream_handle, int), "execute_async_v3 takes the stream as an int handle"
            stream = cudart.streams[stream_handle]
            assert set(self.shapes) == set(self.engine.inputs), "every input shape must be set"
            assert set(self.addresses) == set(self.engine.names), "every tensor needs an address"
            assert self.device_memory and self.device_memory_bytes >= self.engine.device_memory_size_v2
            assert self.device_memory in stats.allocated, "activation memory was freed"
            if stream.recording is not None:
                if stats.executions.get(self.engine.component, 0) == 0:
                    raise AssertionError("TensorRT needs one ordinary call before capture")
                stream.recording.append(self._compute)
                return True
            self._compute()
            return True

        def _compute(self):
            stats.executions[self.engine.component] = stats.executions.get(self.engine.component, 0) + 1
            feeds = {}
            for name, arg in self.engine.inputs.items():
                dtype = NUMPY[ONNX_TYPES[arg.type]]
                shape = self.shapes[name]
                size = math.prod(shape) * np.dtype(dtype).itemsize
                raw = (ctypes.c_char * size).from_address(self.addresses[name])
                feeds[name] = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
            results = self.engine.session.run(list(self.engine.outputs), feeds)
            for name, value in zip(self.engine.outputs, results):
                value = np.ascontiguousarray(value)
                assert tuple(value.shape) == tuple(self.get_tensor_shape(name))
                ctypes.memmove(self.addresses[name], value.ctypes.data, value.nbytes)

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    return trt


def install(
    monkeypatch,
    stats: Stats | None = None,
    device_name: str = DEVICE_NAME,
    version: str = "10.9.0",
    capability: tuple[int, int] = (9, 0),
) -> Stats:
    """Makes `import tensorrt` and `from cuda.bindings import runtime` give the fakes."""
    import sys

    stats = stats or Stats()
    cudart = make_cudart(stats, device_name, capability)
    trt = make_tensorrt(stats, cudart, version)
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = cudart
    cuda.bindings = bindings
    for name, module in (
        ("tensorrt", trt),
        ("cuda", cuda),
        ("cuda.bindings", bindings),
        ("cuda.bindings.runtime", cudart),
    ):
        monkeypatch.setitem(sys.modules, name, module)
    return stats
