"""ONNX graph transforms of the export: fp16 conversion, target-specific optimization, saving
with external data. Each takes and returns a file path, so large models never need to be
serialized into one protobuf (which cannot exceed 2 GB)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from sdrt.errors import ConfigError

# Kept in fp32 in fp16 graphs: they overflow or lose too much in fp16 (GroupNorm is exported
# as InstanceNormalization plus an affine; its statistics need fp32).
FP16_KEEP_FP32_OPS = ["InstanceNormalization", "LayerNormalization", "GroupNorm", "SkipGroupNorm", "Softmax"]
# Graph inputs kept fp32 in fp16 graphs: fractional (Karras) timesteps near 1000 would round
# to 0.5 in fp16.
FP16_KEEP_FP32_IO = ["timestep"]
# protobuf cannot serialize a message over 2 GiB: larger weights go to an external data file.
PROTOBUF_LIMIT_BYTES = 2**31
EXTERNAL_DATA_SUFFIX = ".data"
# ORT transformer-optimizer model types, per component.
OPTIMIZER_MODEL_TYPES = {
    "text_encoder": "clip",
    "text_encoder_2": "clip",
    "unet": "unet",
    "vae_decoder": "vae",
    "vae_encoder": "vae",
}
TARGETS = ("cpu", "cuda")
PRECISIONS = ("fp32", "fp16")


def weights_size(model) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer)


def save(model, path: Path) -> list[Path]:
    """Save `model` to `path`; weights go to `path + .data` when the model is too large for
    one protobuf. Returns the files written."""
    import onnx

    if weights_size(model) < PROTOBUF_LIMIT_BYTES:
        onnx.save_model(model, str(path))
        return [path]
    data = path.with_name(path.name + EXTERNAL_DATA_SUFFIX)
    onnx.save_model(
        model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name, size_threshold=0
    )
    return [path, data]


def convert(source: Path, destination: Path, fp16: bool) -> list[Path]:
    """The traced graph at `source` saved as `destination` (weights over protobuf's limit in one
    `.data` file beside it), in fp16 if asked: fp16 weights, activations, inputs and outputs,
    but FP16_KEEP_FP32_OPS and _IO stay fp32. Returns the files written.

    Weights are streamed one tensor at a time, never all in memory: the graph is converted
    without its external data (shapes inferred from the file), then each tensor is read,
    converted (with onnxruntime's own value clamping) and appended. SDXL's UNet (10 GB in
    fp32) and bigG text encoder (2.8 GB) convert this way within a few hundred MB."""
    import onnx
    from onnx.external_data_helper import uses_external_data
    from onnxruntime.transformers.float16 import convert_float_to_float16

    if not fp16:
        return _save_streamed(onnx.load_model(str(source), load_external_data=False), source.parent, destination, set())
    inferred = source.with_name(source.stem + ".shapes.onnx")
    onnx.shape_inference.infer_shapes_path(str(source), str(inferred))
    model = onnx.load_model(str(inferred), load_external_data=False)
    external_floats = {
        t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and uses_external_data(t)
    }
    with _shapes_from_dims():
        model = convert_float_to_float16(
            model, keep_io_types=FP16_KEEP_FP32_IO, op_block_list=FP16_KEEP_FP32_OPS, disable_shape_infer=True
        )
    halved = {
        t.name for t in model.graph.initializer if t.name in external_floats and t.data_type == onnx.TensorProto.FLOAT16
    }
    return _save_streamed(model, source.parent, destination, halved)


@contextlib.contextmanager
def _shapes_from_dims():
    """onnxruntime's converter reads a whole tensor to learn its shape (for the value info of
    an initializer that feeds a kept-fp32 op); with external data not loaded, the shape is
    taken from the tensor's dims instead, which is the same value without reading it."""
    from onnx import helper
    from onnxruntime.transformers import float16

    original = float16.make_value_info_from_tensor
    float16.make_value_info_from_tensor = lambda tensor: helper.make_tensor_value_info(
        tensor.name, tensor.data_type, list(tensor.dims)
    )
    try:
        yield
    finally:
        float16.make_value_info_from_tensor = original


def _save_streamed(model, base_dir: Path, destination: Path, to_half: set[str]) -> list[Path]:
    """Save `model`, whose external tensors live under `base_dir`, as `destination` plus one
    data file; the tensors named in `to_half` hold float32 data to store as float16. Each
    tensor's bytes go from file to file: never into the proto, whose arena would keep them."""
    import numpy as np
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data
    from onnxruntime.transformers.float16 import convert_np_to_float16

    external = [t for t in model.graph.initializer if uses_external_data(t)]
    if not external:  # all in the graph already: small enough to hold
        return save(model, destination)
    data = destination.with_name(destination.name + EXTERNAL_DATA_SUFFIX)
    sources: dict[str, object] = {}
    try:
        with open(data, "wb") as handle:
            for tensor in external:
                info = ExternalDataInfo(tensor)
                if info.location not in sources:
                    sources[info.location] = open(base_dir / info.location, "rb")  # noqa: SIM115 (closed below)
                source = sources[info.location]
                source.seek(info.offset or 0)
                raw = source.read(info.length) if info.length else source.read()
                if tensor.name in to_half:
                    raw = convert_np_to_float16(np.frombuffer(raw, dtype=np.float32)).astype(np.float16).tobytes()
                offset = handle.tell()
                handle.write(raw)
                del tensor.external_data[:]
                for key, value in (("location", data.name), ("offset", str(offset)), ("length", str(len(raw)))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, value
                tensor.data_location = onnx.TensorProto.EXTERNAL
    finally:
        for source in sources.values():
            source.close()
    onnx.save_model(model, str(destination))
    return [destination, data]


#: Initializers smaller than this stay inside the optimized graph (onnx's own default threshold):
#: the folded shape constants, which shape inference must read inline on the next load.
INLINE_TENSOR_BYTES = 1024


def optimize_for_cpu(source: Path, destination: Path) -> None:
    """ONNX Runtime's own graph optimizations for its CPU provider, applied once offline.

    The 'extended' level (fusions the CPU provider implements: GELU, LayerNorm, attention,
    MatMul+Add) is portable across CPUs, unlike 'all', whose layout changes are tied to the
    machine that made them."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(destination)
    if source.with_name(source.name + EXTERNAL_DATA_SUFFIX).exists():
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", destination.name + EXTERNAL_DATA_SUFFIX
        )
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", str(INLINE_TENSOR_BYTES)
        )
    destination.unlink(missing_ok=True)
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])


def optimize_for_cuda(source: Path, component: str, fp16: bool):
    """ONNX Runtime's transformer optimizer for diffusion models (fused attention, GroupNorm,
    BiasSplitGelu, NHWC convolutions) for the CUDA provider; returns the optimized model.

    The VAE's attention fusion is left off: in onnxruntime 1.32 it fails on NumPy >= 2.4
    (it converts a one-element array with int()), and the VAE has a single attention block."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    model_type = OPTIMIZER_MODEL_TYPES[component]
    options = FusionOptions(model_type)
    if model_type == "vae":
        options.enable_attention = False
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    optimized = optimize_model(
        str(source),
        model_type=model_type,
        num_heads=0,
        hidden_size=0,
        opt_level=0,
        optimization_options=options,
        use_gpu=True,
    )
    if fp16:
        optimized.convert_float_to_float16(keep_io_types=FP16_KEEP_FP32_IO, op_block_list=FP16_KEEP_FP32_OPS)
    return optimized.model


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} {value!r} is not supported; choose one of {', '.join(allowed)}")


def add_input_defaults(path: Path, defaults: dict) -> None:
    """Gives graph inputs a default value (an initializer of the same name, which ONNX Runtime
    lets a caller override), so that callers that do not know an input can leave it out."""
    if not defaults:
        return
    import onnx
    from onnx import numpy_helper

    model = onnx.load_model(str(path), load_external_data=False)
    types = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type) for i in model.graph.input}
    for name, value in defaults.items():
        if name not in types:
            raise ValueError(f"{path} has no input {name} to give a default")
        model.graph.initializer.append(numpy_helper.from_array(value.astype(types[name]), name))
    onnx.save_model(model, str(path))


# onnxruntime.transformers' UNet fusions whose operators have no CPU kernel in ONNX Runtime
# (GroupNorm, SkipGroupNorm, BiasSplitGelu, NHWC Conv) or whose packed layouts the CPU
# MultiHeadAttention kernel does not take (packed QKV, packed KV): left off for the CPU.
CPU_FUSED_COMPONENTS = ("unet",)
CPU_UNFUSABLE = (
    "enable_nhwc_conv",
    "enable_group_norm",
    "enable_skip_group_norm",
    "enable_bias_splitgelu",
    "enable_packed_qkv",
    "enable_packed_kv",
)


def fuse_attention_for_cpu(source: Path, destination: Path) -> list[Path]:
    """The UNet's attention (classic MatMul + Softmax + MatMul, as exported) fused into ONNX
    Runtime's com.microsoft MultiHeadAttention, which the CPU provider runs blockwise without
    materialising each head's score matrix; only fusions with CPU kernels. Self-attention's packed
    Q, K, V weights are split back (sdrt.export.cpu_attention: LoRA needs them apart). Returns the files.

    The fusions run on the graph without its external weights (their shape inference copies the
    model several times: with SD 1.5's 3.4 GB of weights loaded, about 11 GB), reading only the
    weights they pack; the rest are loaded once, to save."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    from sdrt.export.cpu_attention import separate_self_attention_weights

    options = FusionOptions("unet")
    for name in CPU_UNFUSABLE:
        setattr(options, name, False)
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    folder = source.resolve().parent
    graph = onnx.load_model(str(source), load_external_data=False)
    # the fusions read a weight through its external data path, relative to the working folder
    with contextlib.chdir(folder):
        optimized = optimize_model(
            graph, model_type="unet", num_heads=0, hidden_size=0, opt_level=0, optimization_options=options
        )
    load_external_data_for_model(optimized.model, str(folder))
    return save(separate_self_attention_weights(optimized.model), destination)
