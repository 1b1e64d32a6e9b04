"""Engines and the backends that make them.

A backend is a value with behaviour: its name (the CLI's choices come from BACKENDS), whether
a model folder needs a manifest for it, how it opens a session to read a folder without one,
and `load(...)`, which returns the manifest as the engines see it (TensorRT narrows the ranges
to its built profile) and a factory that makes one engine per component. The pipeline holds a
backend and never compares backend names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdrt.errors import ConfigError, ModelFolderError
from sdrt.runtime.engines.base import Engine, EngineInputError, EngineRunError
from sdrt.runtime.manifest import UNET, Manifest

EngineFactory = Callable[[str], Engine]
#: Memory for LoRA-merged ONNX Runtime sessions of one component (sdrt.runtime.features.lora.variants).
DEFAULT_LORA_CACHE_MB = 8192
MIB = 2**20


@dataclass(frozen=True)
class LoadOptions:
    """Load-time engine settings (see Pipeline.load)."""

    threads: int | None = None
    io_binding: bool | None = None  # None: the backend's default
    cuda_graph: bool = False
    progress: Callable[[str], None] | None = None
    lora_cache_mb: int = DEFAULT_LORA_CACHE_MB


class Backend(ABC):
    """Where engines run."""

    name: str
    #: Whether a folder without manifest.json can be used (its graphs are read instead).
    infers_manifest: bool = True

    def open_session(self, path: Path, options: LoadOptions) -> Any:
        """A session for reading a manifest-less folder's graphs (backends that infer)."""
        raise ModelFolderError(
            f"{path.parent.parent} has no manifest.json, which the {self.name} backend needs; "
            "export it with `sdrt export`"
        )

    def session_tensors(self, session: Any) -> tuple[list, list]:
        """The input and output TensorSpecs of a session open_session opened."""
        from sdrt.runtime.engines.onnxruntime import session_tensor_specs

        return session_tensor_specs(session)

    @abstractmethod
    def load(
        self, folder: Path, manifest: Manifest, options: LoadOptions, sessions: dict[str, Any]
    ) -> tuple[Manifest, EngineFactory]:
        """(the manifest the engines accept, a factory of engines by component name).
        `sessions` are ones open_session opened to infer the manifest; engines adopt them."""

    def attached_engine(
        self, folder: Path, manifest, component: str, options: LoadOptions, model_engines: dict[str, Engine]
    ) -> Engine:
        """An engine from another folder that runs beside the model's engines, at the model's
        ranges (`manifest.dims`): a ControlNet's."""
        return self.load(folder, manifest, options, {})[1](component)

    @abstractmethod
    def weight_variants(
        self,
        component: str,
        engine: Engine,
        make_engine: EngineFactory,
        pristine: Callable[[str], Any],
        loaded: LoadedFolder,
    ):
        """The component's engines for LoRA-merged weights (sdrt.runtime.features.lora.variants)."""


@dataclass(frozen=True)
class OrtBackend(Backend):
    """ONNX Runtime on one execution provider; IO binding is the default on devices."""

    name: str
    device_resident: bool

    def open_session(self, path: Path, options: LoadOptions) -> Any:
        from sdrt.runtime.engines.onnxruntime import open_session

        return open_session(path, self.name, options.threads)

    def load(self, folder, manifest, options, sessions):
        from sdrt.runtime.engines.onnxruntime import BoundOrtEngine, OrtEngine

        if options.cuda_graph and not self.device_resident:
            raise ConfigError("CUDA graphs need the cuda backend")
        bound = self.device_resident if options.io_binding is None else options.io_binding
        if options.cuda_graph and not bound:
            raise ConfigError("CUDA graphs need IO binding; leave io_binding on")

        def make_engine(name: str, weights=None) -> Engine:
            spec = manifest.components[name]
            common = dict(
                backend=self.name,
                threads=options.threads,
                session=None if weights else sessions.get(name),
                weights=weights,
            )
            if bound:
                return BoundOrtEngine(
                    folder / spec.file,
                    name,
                    spec,
                    manifest.dims,
                    cuda_graph=options.cuda_graph and name == UNET,
                    **common,
                )
            return OrtEngine(folder / spec.file, name, spec, manifest.dims, **common)

        return manifest, make_engine

    def weight_variants(self, component, engine, make_engine, pristine, loaded):
        return _session_variants(component, engine, make_engine, loaded)


def _session_variants(component, engine, make_engine, loaded):
    """Engines made with merged weights, cached within the LoRA memory budget by graph size."""
    from sdrt.runtime.features.lora.variants import SessionVariants

    folder, spec, options = loaded.folder, loaded.manifest.components[component], loaded.options
    files = [folder / spec.file, *(folder / name for name in spec.data_files)]
    size = sum(path.stat().st_size for path in files if path.is_file() and path.suffix != ".json")
    return SessionVariants(engine, lambda weights: make_engine(component, weights), size, options.lora_cache_mb * MIB)


class TensorRtBackend(Backend):
    """Engines built by `sdrt build` (rebuilt, with a message through `progress`, when stale)."""

    name = "tensorrt"
    infers_manifest = False

    def load(self, folder, manifest, options, sessions):
        from sdrt.runtime.engines.tensorrt.run import load_engines

        runtime, narrowed = load_engines(folder, manifest, options.progress)
        return narrowed, runtime.engine

    def attached_engine(self, folder, manifest, component, options, model_engines):
        """Built with the model's settings and profile, on the model's stream and memory."""
        return model_engines[UNET].runtime.attach(folder, component, manifest.components[component])

    def weight_variants(self, component, engine, make_engine, pristine, loaded):
        from sdrt.runtime.features.lora.variants import RefitVariants

        return RefitVariants(engine, pristine)


class OpenVinoBackend(Backend):
    """OpenVINO's CPU plugin on the same ONNX files (sdrt.runtime.engines.openvino). LoRA-merged
    weights compile a model with the merged constants, cached like ONNX Runtime's sessions."""

    name = "openvino"

    def open_session(self, path: Path, options: LoadOptions) -> Any:
        from sdrt.runtime.engines.openvino import read_model

        return read_model(path)

    def session_tensors(self, session: Any) -> tuple[list, list]:
        from sdrt.runtime.engines.openvino import model_tensor_specs

        return model_tensor_specs(session)

    def load(self, folder, manifest, options, sessions):
        from sdrt.runtime.engines.openvino import OpenVinoEngine

        if options.cuda_graph:
            raise ConfigError("CUDA graphs need the cuda backend")
        if options.io_binding:
            raise ConfigError("IO binding is for the cuda backend; openvino runs on the host")

        def make_engine(name: str, weights=None) -> Engine:
            spec = manifest.components[name]
            return OpenVinoEngine(
                folder / spec.file,
                name,
                spec,
                manifest.dims,
                threads=options.threads,
                model=None if weights else sessions.get(name),
                weights=weights,
            )

        return manifest, make_engine

    def weight_variants(self, component, engine, make_engine, pristine, loaded):
        return _session_variants(component, engine, make_engine, loaded)


@dataclass(frozen=True)
class LoadedFolder:
    """A model folder as loaded: where, its manifest and the load-time options."""

    folder: Path
    manifest: Manifest
    options: LoadOptions


@dataclass
class LoadedEngines:
    """A loaded model's engines by component, its backend and the factory of the rest."""

    engines: dict[str, Engine]
    backend: Backend
    make_engine: EngineFactory


BACKENDS: dict[str, Backend] = {
    backend.name: backend
    for backend in (
        OrtBackend("cpu", device_resident=False),
        OrtBackend("cuda", device_resident=True),
        TensorRtBackend(),
        OpenVinoBackend(),
    )
}
BACKEND_NAMES = tuple(BACKENDS)
DEFAULT_BACKEND = "cpu"


def backend_named(name: str | Backend) -> Backend:
    if isinstance(name, Backend):
        return name
    try:
        return BACKENDS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}") from None


__all__ = [
    "BACKENDS",
    "BACKEND_NAMES",
    "Backend",
    "DEFAULT_BACKEND",
    "Engine",
    "EngineFactory",
    "EngineInputError",
    "EngineRunError",
    "LoadOptions",
    "LoadedEngines",
    "LoadedFolder",
    "backend_named",
]
