"""`sdrt build`: one TensorRT engine per component, from the ONNX file and the build settings,
cached under the model folder with a key that says when it is stale (plan.py)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdrt.runtime.engines.tensorrt.cuda import MIB, BuildError, Cuda, import_tensorrt, peak_host_mib
from sdrt.runtime.engines.tensorrt.plan import (
    BuildSettings,
    Device,
    EngineKey,
    component_precision,
    key_path,
    plan_path,
    stale_reason,
)
from sdrt.runtime.files.integrity import verify_components
from sdrt.runtime.manifest import ComponentSpec, Manifest
from sdrt.runtime.qdq_formats import FP8_MIN_COMPUTE_CAPABILITY, fp8_supported

TIMING_CACHE = "timing.cache"
#: A Q/DQ graph (sdrt export --qdq) builds weakly typed: its Q/DQ layers in the format the flag
#: allows (TensorRT's explicit quantization), everything else in fp16 as an fp32 graph does.
QDQ_BUILDER_FLAGS = {"int8": "INT8", "fp8": "FP8"}
FP16_BUILDS = ("fp16", *QDQ_BUILDER_FLAGS)


def component_key(component: str, spec: ComponentSpec, settings: BuildSettings, device: Device) -> EngineKey:
    precision = component_precision(component, spec, settings.precision)
    return EngineKey.of(component, spec, settings.profile, precision, device, settings.builder())


def build_engines(
    folder: str | Path, settings: BuildSettings, progress: Callable[[str], None] = print, force: bool = False
) -> dict[str, Path]:
    """Builds (or keeps, when still valid) one engine per component, saves build.json, and
    returns the engine files. The timing cache in tensorrt/timing.cache is read and updated."""
    trt, cudart = import_tensorrt()
    folder = Path(folder)
    manifest = Manifest.load(folder)
    verify_components(folder, manifest, [name for name in settings.components if name in manifest.components])
    cuda = Cuda(cudart)
    device = cuda.device(trt.__version__)
    components = [name for name in settings.components if name in manifest.components]
    check_qdq_device(manifest, components, device)
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
            build_one(Builder(trt, cuda, progress), folder, component, spec, key, settings)
        plans[component] = plan
    settings.save(folder)
    return plans


def check_qdq_device(manifest: Manifest, components: list[str], device: Device) -> None:
    """One line for fp8 engines on a GPU without FP8 (compute capability below 8.9)."""
    for name in components:
        qdq = manifest.components[name].qdq
        if qdq is not None and qdq.qdq == "fp8" and not fp8_supported(device.compute_capability):
            raise BuildError(
                f"{name} is an fp8 Q/DQ graph and this GPU ({device.gpu_name}, compute capability "
                f"{device.compute_capability}) has no FP8; TensorRT builds fp8 from compute capability "
                f"{'.'.join(map(str, FP8_MIN_COMPUTE_CAPABILITY))} (Ada, Hopper): export with --qdq int8 for this GPU"
            )


@dataclass(frozen=True)
class Builder:
    """What a build runs with: TensorRT's module, CUDA, and where progress lines go."""

    trt: Any
    cuda: Cuda
    progress: Callable[[str], None]


def build_one(
    builder_tools: Builder, folder: Path, component: str, spec: ComponentSpec, key: EngineKey, settings: BuildSettings
) -> Path:
    trt, cuda, progress = builder_tools.trt, builder_tools.cuda, builder_tools.progress
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = spec.precision == "fp16"
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if hasattr(trt, "OnnxParserFlag") and hasattr(trt.OnnxParserFlag, "NATIVE_INSTANCENORM"):
        parser.set_flag(trt.OnnxParserFlag.NATIVE_INSTANCENORM)  # GroupNorm as one normalization layer
    onnx_file = folder / spec.file
    stripped = without_input_defaults(onnx_file)
    parsed = parser.parse_from_file(str(onnx_file)) if stripped is None else parser.parse(stripped, str(onnx_file))
    if not parsed:
        errors = "; ".join(str(parser.get_error(index)) for index in range(parser.num_errors))
        raise BuildError(f"TensorRT cannot parse {onnx_file}: {errors or 'unknown error'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    if spec.weights_map:
        marked = refittable_weights(trt, network, config, folder, component, spec)
        progress(f"{component}: {marked} refittable (LoRA)")
    if spec.qdq is not None:
        config.set_flag(getattr(trt.BuilderFlag, QDQ_BUILDER_FLAGS[spec.qdq.qdq]))
        progress(f"{component}: {spec.qdq.nodes_quantized} layers in {spec.qdq.qdq} (explicit Q/DQ)")
    if key.precision in FP16_BUILDS and not strongly_typed:
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
        raise BuildError(
            f"TensorRT could not build {component} (see its log above); "
            "a smaller --max size or --max-batch, or more --workspace, may help"
        )
    plan = plan_path(folder, key)
    plan.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(plan, memoryview(serialized))
    write_atomically(cache_file, memoryview(config.get_timing_cache().serialize()))
    record = {
        "key": key.to_json(),
        "plan_bytes": plan.stat().st_size,
        "built_seconds": round(time.perf_counter() - started, 1),
    }
    write_atomically(key_path(plan), (json.dumps(record, indent=2) + "\n").encode())
    progress(
        f"{component}: built {plan.name} ({plan.stat().st_size / MIB:.0f} MiB) in "
        f"{record['built_seconds']:.0f} s; peak host memory {peak_host_mib():.0f} MiB, GPU memory in use "
        f"{cuda.memory_in_use() / MIB:.0f} MiB"
    )
    return plan


def without_input_defaults(onnx_file: Path) -> bytes | None:
    """The graph without the default values of its inputs (None if it has none). TensorRT
    reads an input that has an initializer as a constant; sdrt's text encoders give their
    extra token rows a default for runtimes that do not feed them, and TensorRT must get them
    as a real input. External weights stay where they are (the parser reads them by path)."""
    import onnx

    model = onnx.load_model(str(onnx_file), load_external_data=False)
    inputs = {tensor.name for tensor in model.graph.input}
    kept = [tensor for tensor in model.graph.initializer if tensor.name not in inputs]
    if len(kept) == len(model.graph.initializer):
        return None
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model.SerializeToString()


def refittable_weights(trt, network, config, folder: Path, component: str, spec: ComponentSpec) -> str:
    """Makes the weights a LoRA can change refittable: only those where TensorRT can mark them
    one by one (REFIT_INDIVIDUAL), so every other weight keeps its build-time optimizations;
    all weights with older TensorRT versions."""
    from sdrt.runtime.features.lora.weights_map import WeightsMap

    names = sorted({w.initializer for w in WeightsMap.load(folder, component, spec).weights.values()})
    if hasattr(trt.BuilderFlag, "REFIT_INDIVIDUAL") and hasattr(network, "mark_weights_refittable"):
        for name in names:
            if not network.mark_weights_refittable(name):
                raise BuildError(f"TensorRT cannot make {component}'s weight {name} refittable")
        config.set_flag(trt.BuilderFlag.REFIT_INDIVIDUAL)
        return f"{len(names)} weights"
    config.set_flag(trt.BuilderFlag.REFIT)
    return "all weights"


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
                progress(
                    f"{component}: {phase_name} ({time.perf_counter() - started:.0f} s, "
                    f"peak host {peak_host_mib():.0f} MiB)"
                )

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
