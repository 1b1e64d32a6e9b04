"""ONNX Runtime engines: `OrtEngine` runs an ONNX file with `InferenceSession.run`;
`BoundOrtEngine` keeps its buffers on the device with IO binding (the cuda backend's default)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sdrt.errors import ConfigError
from sdrt.runtime.engines.base import Engine, EngineRunError
from sdrt.runtime.files.integrity import check_graph_io
from sdrt.runtime.manifest import ComponentSpec, DimRange, TensorSpec

#: `SDRT_ORT_SPINNING=0`: ONNX Runtime's intra-op threads sleep instead of spinning between parallel
#: work (less CPU on a machine shared with other work, the same numbers; ORT's default is to spin).
SPINNING_ENV = "SDRT_ORT_SPINNING"
ORT_ERRORS_ONLY = 3  # SessionOptions.log_severity_level: 0 verbose .. 4 fatal
#: ONNX Runtime's NCHWc transform reorders convolution filters from the graph file, not from
#: initializers given with add_initializer (so a LoRA on a convolution would be lost: measured
#: on onnxruntime 1.32): sessions built with replaced weights go without it.
IGNORES_REPLACED_WEIGHTS = ["NchwcTransformer"]
#: sdrt's ONNX Runtime backends and their execution providers.
BACKEND_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
#: ONNX Runtime's type names -> the manifest's dtypes (the one table of them).
ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
}


def open_session(
    path: Path,
    backend: str = "cpu",
    threads: int | None = None,
    cuda_graph: bool = False,
    spec: ComponentSpec | None = None,
    weights: dict[str, np.ndarray] | None = None,
):
    """An ONNX Runtime session for `path` on an sdrt backend, with all graph optimizations.
    `cuda_graph` turns on the CUDA provider's graph capture (runs must use IO binding). On the
    CPU, with the component's `spec` (its sha256), the optimized graph is cached per machine
    (sdrt.runtime.engines.ort_cache) so that later loads skip the optimization. `weights`
    replaces initializers by name (LoRA-merged weights; sdrt.runtime.engines.ort_overrides)."""
    import onnxruntime as ort

    from sdrt.runtime.engines import ort_arena, ort_cache

    provider = provider_for(backend)

    def make_options():
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Errors only: ONNX Runtime's warnings are for the graph's author, not the user (an input with
        # a default, sdrt.export.onnx_graph.add_input_defaults, is by design and would warn at every
        # load; folders made elsewhere warn of their exporter's choices).
        options.log_severity_level = ORT_ERRORS_ONLY
        if threads:
            options.intra_op_num_threads = threads
        if os.environ.get(SPINNING_ENV, "1") == "0":  # threads wait asleep between parallel work
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if backend == "cpu":
            ort_arena.share(options)  # one arena for the pipeline's sessions, not one each
        return options

    provider_options = {"enable_cuda_graph": "1"} if cuda_graph and backend == "cuda" else {}
    providers = [(provider, provider_options)]
    try:
        if weights:
            return _session_with_weights(Path(path), backend, spec, make_options, providers, weights)
        if backend == "cpu" and spec is not None and ort_cache.enabled():
            return ort_cache.cached_session(Path(path), spec, make_options, providers)
        return ort.InferenceSession(str(path), make_options(), providers=providers)
    except Exception as error:  # onnxruntime raises its own exception types for bad files
        raise EngineRunError(f"cannot load {path}: {error}") from None


def _session_with_weights(
    path: Path, backend: str, spec: ComponentSpec | None, make_options, providers, weights: dict[str, np.ndarray]
):
    """A session with `weights` replaced: from the cached optimized graph where every weight
    can be placed in it, else optimized from the exported graph with the weights in it."""
    import onnxruntime as ort

    from sdrt.runtime.engines import ort_cache, ort_overrides

    entry = ort_cache.complete_entry(spec) if backend == "cpu" and spec is not None and ort_cache.enabled() else None
    placed = None if entry is None else ort_overrides.place(entry, path, weights, ort_cache.MODEL_FILE)
    options = make_options()
    if placed is not None:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        source, replacements = entry / ort_cache.MODEL_FILE, placed
    else:
        source, replacements = path, weights
    values = ort_overrides.add_initializers(options, replacements)
    disabled = {} if placed is not None else {"disabled_optimizers": IGNORES_REPLACED_WEIGHTS}
    session = ort.InferenceSession(str(source), options, providers=providers, **disabled)
    session.sdrt_weights = values  # ONNX Runtime reads them for the session's lifetime
    session.sdrt_from_cache = placed is not None
    return session


class OrtEngine(Engine):
    """An ONNX file in ONNX Runtime. `InferenceSession.run` is safe to call from many threads.
    `session`, when given, is one already opened with open_session for the same file."""

    def __init__(
        self,
        path: Path,
        name: str,
        spec: ComponentSpec,
        dims: Mapping[str, DimRange],
        *,
        backend: str = "cpu",
        threads: int | None = None,
        session=None,
        weights=None,
    ):
        super().__init__(name, spec, dims)
        self.session = (
            session if session is not None else open_session(path, backend, threads, spec=spec, weights=weights)
        )
        check_graph_io(name, spec.inputs, spec.outputs, *session_tensor_specs(self.session))

    def _run(self, feeds: Mapping[str, np.ndarray], dims: Mapping[str, int]) -> dict[str, np.ndarray]:
        with self._errors():
            outputs = self.session.run(self.output_names, dict(feeds))
        return dict(zip(self.output_names, outputs))

    @contextlib.contextmanager
    def _errors(self):
        """ONNX Runtime's failures as EngineRunError, out-of-memory with advice."""
        try:
            yield
        except Exception as error:  # onnxruntime raises RuntimeException and friends
            message = str(error)
            if "allocate" in message.lower() or "memory" in message.lower():
                raise EngineRunError(
                    f"{self.name} ran out of memory: generate fewer images at once or a smaller size"
                ) from None
            raise EngineRunError(f"{self.name} failed: {message.splitlines()[0]}") from None


@dataclass
class _BoundShape:
    """The device buffers and binding of one set of input shapes."""

    binding: object
    inputs: dict  # name -> OrtValue
    outputs: dict  # name -> OrtValue, for outputs whose shape the inputs fix
    run_options: object
    uploaded: dict = field(default_factory=dict)  # name -> the read-only host array now on the device


class BoundOrtEngine(OrtEngine):
    """ONNX Runtime with IO binding: for each set of input shapes, input and output buffers are
    allocated once on the device and reused; a read-only host array (the text embeddings, the
    same object for every step of a denoising loop) is uploaded once and stays on the device;
    outputs are copied back to the host. With `cuda_graph`, each shape set gets its own CUDA
    graph id: ONNX Runtime captures the UNet on the first run at that shape and replays it
    after (the buffers keep their addresses, which graphs need).

    Calls on one engine are serialized (a binding is not thread-safe). `last_copy_seconds` is
    the time the calling thread's last call spent copying between host and device."""

    MAX_SHAPES = 8  # shape sets kept (and CUDA graphs); the oldest is dropped past this

    def __init__(
        self,
        path: Path,
        name: str,
        spec: ComponentSpec,
        dims: Mapping[str, DimRange],
        *,
        backend: str = "cuda",
        threads: int | None = None,
        session=None,
        cuda_graph: bool = False,
        weights=None,
    ):
        if session is None:
            session = open_session(path, backend, threads, cuda_graph=cuda_graph, spec=spec, weights=weights)
        else:
            cuda_graph = False  # a session opened elsewhere has no graph capture enabled
        super().__init__(path, name, spec, dims, backend=backend, threads=threads, session=session)
        self.device = "cuda" if backend == "cuda" else "cpu"
        self.copies_to_device = True
        self.cuda_graph = cuda_graph and backend == "cuda"
        self._shapes: dict[tuple, _BoundShape] = {}
        self._lock = threading.Lock()
        self._local = threading.local()

    @property
    def last_copy_seconds(self) -> float:
        """Host-device copy time of this thread's last call."""
        return getattr(self._local, "copy_seconds", 0.0)

    def _bound(self, feeds: Mapping[str, np.ndarray], dims: Mapping[str, int]) -> _BoundShape:
        import onnxruntime as ort

        key = tuple(sorted((name, array.shape) for name, array in feeds.items()))
        if key in self._shapes:
            return self._shapes[key]
        if len(self._shapes) >= self.MAX_SHAPES:
            self._shapes.pop(next(iter(self._shapes)))
        binding = self.session.io_binding()
        inputs = {}
        for name, array in feeds.items():
            inputs[name] = ort.OrtValue.ortvalue_from_shape_and_type(list(array.shape), array.dtype, self.device, 0)
            binding.bind_ortvalue_input(name, inputs[name])
        outputs = {}
        for tensor in self.spec.outputs:
            if all(isinstance(size, int) or size in dims for size in tensor.shape):
                shape = [size if isinstance(size, int) else dims[size] for size in tensor.shape]
                outputs[tensor.name] = ort.OrtValue.ortvalue_from_shape_and_type(
                    shape, np.dtype(tensor.dtype), self.device, 0
                )
                binding.bind_ortvalue_output(tensor.name, outputs[tensor.name])
            else:  # a size the inputs do not fix (the VAE's image side): ONNX Runtime allocates it
                binding.bind_output(tensor.name, self.device, 0)
        run_options = ort.RunOptions()
        if self.cuda_graph:
            run_options.add_run_config_entry("gpu_graph_id", str(len(self._shapes) + 1))
        self._shapes[key] = _BoundShape(binding, inputs, outputs, run_options)
        return self._shapes[key]

    def _run(self, feeds: Mapping[str, np.ndarray], dims: Mapping[str, int]) -> dict[str, np.ndarray]:
        with self._lock:
            bound = self._bound(feeds, dims)
            copying = time.perf_counter()
            for name, array in feeds.items():
                if not array.flags.writeable and bound.uploaded.get(name) is array:
                    continue  # already on the device
                bound.inputs[name].update_inplace(np.ascontiguousarray(array))
                bound.uploaded[name] = None if array.flags.writeable else array
            copy_seconds = time.perf_counter() - copying
            with self._errors():
                self.session.run_with_iobinding(bound.binding, bound.run_options)
            copying = time.perf_counter()
            if len(bound.outputs) == len(self.output_names):
                values = [bound.outputs[name] for name in self.output_names]
            else:
                values = bound.binding.get_outputs()
            # A CPU buffer's numpy() is a view that the next run overwrites: copy it.
            outputs = {
                name: np.array(value.numpy(), copy=True) if self.device == "cpu" else value.numpy()
                for name, value in zip(self.output_names, values)
            }
            self._local.copy_seconds = copy_seconds + time.perf_counter() - copying
        return outputs


def provider_for(backend: str) -> str:
    """The ONNX Runtime execution provider of an sdrt backend, checked to be installed."""
    import onnxruntime as ort

    if backend not in BACKEND_PROVIDERS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKEND_PROVIDERS)}")
    provider = BACKEND_PROVIDERS[backend]
    available = ort.get_available_providers()
    if provider not in available:
        raise ConfigError(
            f"backend {backend!r} needs ONNX Runtime's {provider}, which this installation lacks "
            f"(it has {', '.join(available)}); for cuda install onnxruntime-gpu (see README.md)"
        )
    return provider


def session_tensor_specs(session) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of an ONNX Runtime session as specs (for folders without a manifest)."""

    def spec(arg) -> TensorSpec:
        shape = [d if isinstance(d, int) else (d or f"{arg.name}_{i}") for i, d in enumerate(arg.shape)]
        return TensorSpec(arg.name, ORT_DTYPES.get(arg.type, arg.type), shape)

    inputs = list(session.get_inputs()) + list(session.get_overridable_initializers())  # inputs with defaults too
    return [spec(a) for a in inputs], [spec(a) for a in session.get_outputs()]
