"""OpenVINO engines: an exported ONNX file read by OpenVINO's ONNX front end and compiled for its
CPU plugin, run by tensor name like every engine (sdrt.runtime.engines.base).

The same graph files serve ONNX Runtime and OpenVINO: nothing is exported twice. OpenVINO's CPU
plugin computes in bfloat16 on CPUs that have bf16 instructions (AVX-512 BF16, AMX) unless told
otherwise, which would move images by several /255 from the reference: sdrt asks for f32.
LoRA-merged weights replace the graph's constants by initializer name before compiling (the
ONNX front end keeps each initializer's name as its Constant's friendly name).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from sdrt.errors import ModelFolderError
from sdrt.runtime.engines.base import Engine, EngineRunError
from sdrt.runtime.files.integrity import check_graph_io
from sdrt.runtime.manifest import ComponentSpec, DimRange, TensorSpec

DEVICE = "CPU"
#: Compile settings: full f32 arithmetic (see the module docstring) and one request at a time,
#: as the denoising loop calls an engine.
COMPILE_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
#: OpenVINO's element type names -> the manifest's dtypes.
OV_DTYPES = {"f32": "float32", "f16": "float16", "i32": "int32", "i64": "int64"}

_core_lock = threading.Lock()
_core = None


def core():
    """One OpenVINO Core per process (it holds the plugins; creating one is costly)."""
    global _core
    with _core_lock:
        if _core is None:
            try:
                import openvino
            except ImportError:
                raise ModelFolderError(
                    "the openvino backend needs the openvino package: pip install 'sdrt[openvino]'"
                ) from None
            _core = openvino.Core()
        return _core


def read_model(path: Path, weights: Mapping[str, np.ndarray] | None = None):
    """The graph at `path` as an OpenVINO model, with `weights` replacing constants by name."""
    reader = core()  # outside the try: a missing package is its own error
    try:
        model = reader.read_model(str(path))
    except Exception as error:  # OpenVINO raises its own exception types for bad files
        raise EngineRunError(f"cannot load {path}: {str(error).splitlines()[0]}") from None
    if weights:
        replace_constants(model, weights)
    return model


def replace_constants(model, weights: Mapping[str, np.ndarray]) -> None:
    """Swap the Constants named in `weights` for new ones holding the given arrays."""
    from openvino import opset13 as ops

    constants = {op.get_friendly_name(): op for op in model.get_ops() if op.get_type_name() == "Constant"}
    missing = sorted(set(weights) - set(constants))
    if missing:
        raise EngineRunError(f"the graph has no weights named {missing[:3]}; re-export the model")
    for name, array in weights.items():
        old = constants[name]
        replacement = ops.constant(np.ascontiguousarray(array, dtype=_numpy_dtype(old)))
        replacement.set_friendly_name(name)
        old.output(0).replace(replacement.output(0))


def expose_defaults(model, inputs: list[TensorSpec]) -> None:
    """Make the graph's inputs with defaults inputs again. OpenVINO's ONNX front end folds an
    input that has an initializer into a Constant; sdrt feeds such inputs (the text encoder's
    extra token embeddings, a UNet's ControlNet residuals), so each becomes a Parameter of the
    manifest's shape in its place."""
    from openvino import PartialShape, Type
    from openvino import opset13 as ops

    have = {name for port in model.inputs for name in port.get_names()}
    constants = {op.get_friendly_name(): op for op in model.get_ops() if op.get_type_name() == "Constant"}
    added = []
    for tensor in inputs:
        if tensor.name in have or tensor.name not in constants:
            continue  # a missing input is reported by check_graph_io, naming it
        shape = PartialShape([size if isinstance(size, int) else -1 for size in tensor.shape])
        parameter = ops.parameter(shape, Type(np.dtype(tensor.dtype)), name=tensor.name)
        parameter.output(0).get_tensor().set_names({tensor.name})
        constants[tensor.name].output(0).replace(parameter.output(0))
        added.append(parameter)
    if added:
        model.add_parameters(added)
        model.validate_nodes_and_infer_types()


def _numpy_dtype(constant) -> np.dtype:
    return np.dtype(OV_DTYPES.get(constant.get_element_type().get_type_name(), "float32"))


def model_tensor_specs(model, known: set[str] = frozenset()) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of an OpenVINO model as specs, one per port. A port may carry several
    tensor names (an ONNX output that is also an inner value): the one in `known` (the
    manifest's names) is taken, else the port's first name in sorted order."""

    def spec(port) -> TensorSpec:
        names = sorted(port.get_names())
        name = next((candidate for candidate in names if candidate in known), names[0])
        kind = port.get_element_type().get_type_name()
        dims = list(port.get_partial_shape())
        shape = [dim.get_length() if dim.is_static else f"{name}_{axis}" for axis, dim in enumerate(dims)]
        return TensorSpec(name, OV_DTYPES.get(kind, kind), shape)

    return [spec(port) for port in model.inputs], [spec(port) for port in model.outputs]


class OpenVinoEngine(Engine):
    """An ONNX file compiled by OpenVINO for the CPU. Each calling thread has its own infer
    request (a request is not shared between threads); outputs are copied out of it."""

    def __init__(
        self,
        path: Path,
        name: str,
        spec: ComponentSpec,
        dims: Mapping[str, DimRange],
        *,
        threads: int | None = None,
        model=None,
        weights: Mapping[str, np.ndarray] | None = None,
    ):
        """`model`, when given, is one already read with read_model for the same file."""
        super().__init__(name, spec, dims)
        model = model if model is not None and not weights else read_model(path, weights)
        expose_defaults(model, spec.inputs)
        known = {tensor.name for tensor in (*spec.inputs, *spec.outputs)}
        check_graph_io(name, spec.inputs, spec.outputs, *model_tensor_specs(model, known))
        config = dict(COMPILE_CONFIG)
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        with self._errors():
            self.compiled = core().compile_model(model, DEVICE, config)
        self._ports = {name: port for port in self.compiled.outputs for name in port.get_names()}
        self._local = threading.local()

    def _request(self):
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def _run(self, feeds: Mapping[str, np.ndarray], dims: Mapping[str, int]) -> dict[str, np.ndarray]:
        request = self._request()
        with self._errors():
            results = request.infer({name: np.ascontiguousarray(array) for name, array in feeds.items()})
        # the request's output buffers are reused by its next call: copy them out
        return {name: np.array(results[self._ports[name]]) for name in self.output_names}

    @contextlib.contextmanager
    def _errors(self):
        """OpenVINO's failures as EngineRunError, out-of-memory with advice."""
        try:
            yield
        except EngineRunError:
            raise
        except Exception as error:  # OpenVINO raises RuntimeError and its own types
            message = str(error)
            if "allocate" in message.lower() or "memory" in message.lower():
                raise EngineRunError(
                    f"{self.name} ran out of memory: generate fewer images at once or a smaller size"
                ) from None
            raise EngineRunError(f"{self.name} failed: {message.splitlines()[0]}") from None
