"""A bounded-memory trace for the large engines (the diffusion transformers and their encoders).

`torch.onnx.export` with its weights builds the whole ONNX proto in memory and its constant
folding makes a transposed copy of every Linear weight: a trace held about 2.5x the module's
size, which is 25 GB for SD3.5 Medium's 10 GB transformer and 120 GB for FLUX.1's. Here the
module is traced without its weights (`export_params=False`, no constant folding: the graph
takes each weight as an input named by its state-dict key), then each weight input becomes an
initializer written from the module's own tensor straight into the external data file, one
tensor at a time. The one fold the exporter did that the engines need, a Linear weight's
Transpose, is done here on that one tensor; an Identity of a weight (the exporter's merge of
equal weights) becomes a second name for it. The peak is then the module plus its largest
tensor, and the graph holds the same weights in the same layouts as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import warnings
from pathlib import Path

import numpy as np

from sdrt.export.components import ONNX_OPSET, ComponentExport
from sdrt.export.onnx_graph import EXTERNAL_DATA_SUFFIX

#: Operators on a weight folded here, as the exporter's constant folding did.
TRANSPOSE, IDENTITY = "Transpose", "Identity"
#: glibc's mallopt parameter for the size from which a block gets its own mapping (malloc.h).
M_MMAP_THRESHOLD = -3
#: During the trace, blocks from this size (a weight-sized temporary) are mapped and returned
#: on free. glibc's own threshold rises to 32 MiB after the first large free, and the tracer's
#: one-tensor-at-a-time temporaries then pile up in the heap: 0.7x the module's size on a
#: 650 MB transformer (peak RSS 1.71 GB against 1.30 GB with this).
TRACE_MMAP_THRESHOLD = 1 << 20
#: Restored after the trace: the most glibc's own threshold would have risen to (malloc.c's
#: DEFAULT_MMAP_THRESHOLD_MAX on 64-bit), so later small blocks stay in the heap as before.
GLIBC_MMAP_THRESHOLD_MAX = 32 << 20


def trace_component(component: ComponentExport, example, path: Path, *, weights: bool = True) -> None:
    """torch.onnx's TorchScript trace of `component` on the arrays `example` to `path`, with its
    tensor names and dynamic axes from the manifest; `weights=False` leaves the weights out of the
    graph (graph inputs named by their state-dict keys) and folds no constants on them."""
    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
        torch.onnx.export(
            component.module.eval(),
            tuple(torch.from_numpy(array) for array in example),
            str(path),
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=[t.name for t in component.inputs],
            output_names=[t.name for t in component.outputs],
            dynamic_axes=component.dynamic_axes(),
            export_params=weights,
            do_constant_folding=weights,
        )


def export_streamed(component: ComponentExport, path: Path, example) -> list[Path]:
    """Trace `component` to `path` (graph only) plus `path.data` (its weights, written from the
    module's tensors); `example` are the inputs it is traced on. Returns the files."""
    import onnx

    module = component.module.eval()
    with _large_blocks_mapped():
        trace_component(component, example, path, weights=False)
    model = onnx.load_model(str(path))
    tensors = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    data = path.with_name(path.name + EXTERNAL_DATA_SUFFIX)
    with open(data, "wb") as handle:
        _weights_to_initializers(model.graph, {t.name for t in component.inputs}, tensors, handle, data.name)
    onnx.save_model(model, str(path))
    return [path, data]


@contextlib.contextmanager
def _large_blocks_mapped():
    """TRACE_MMAP_THRESHOLD in force inside the block where the C library is glibc (elsewhere
    nothing changes)."""
    library = ctypes.util.find_library("c")
    mallopt = getattr(ctypes.CDLL(library), "mallopt", None) if library else None
    if mallopt is None or not mallopt(M_MMAP_THRESHOLD, TRACE_MMAP_THRESHOLD):
        yield
        return
    try:
        yield
    finally:
        mallopt(M_MMAP_THRESHOLD, GLIBC_MMAP_THRESHOLD_MAX)


def _weights_to_initializers(graph, real_inputs: set[str], tensors: dict, handle, location: str) -> None:
    """Every graph input that is not one of `real_inputs` is a weight: it becomes an external
    initializer (its Transposes folded into transposed initializers, its Identities into names
    for it), appended to `handle` one tensor at a time."""
    weights = [i.name for i in graph.input if i.name not in real_inputs]
    missing = [name for name in weights if name not in tensors]
    if missing:
        raise ValueError(f"the traced graph takes inputs the module has no tensor for: {', '.join(missing[:3])}")
    kept = [i for i in graph.input if i.name in real_inputs]
    del graph.input[:]
    graph.input.extend(kept)
    weight_set = set(weights)
    # Identity output -> the weight it names (not a graph output, which must stay a node's)
    outputs = {o.name for o in graph.output}
    aliases = {
        node.output[0]: node.input[0]
        for node in graph.node
        if node.op_type == IDENTITY and node.input[0] in weight_set and node.output[0] not in outputs
    }
    _rename_inputs(graph, aliases)
    folded = [node for node in graph.node if node.op_type == TRANSPOSE and node.input[0] in weight_set]
    for node in folded:
        (perm,) = [list(a.ints) for a in node.attribute if a.name == "perm"] or [None]
        array, kind = _array(tensors[node.input[0]])
        _append_initializer(graph, node.output[0], np.transpose(array, perm), kind, handle, location)
    dropped = {node.output[0] for node in folded} | set(aliases)
    nodes = [node for node in graph.node if node.output[0] not in dropped]
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input} | outputs
    for name in weights:
        if name in used:
            _append_initializer(graph, name, *_array(tensors[name]), handle, location)


def _rename_inputs(graph, aliases: dict[str, str]) -> None:
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in aliases:
                node.input[index] = aliases[name]


def _array(tensor) -> tuple[np.ndarray, int]:
    """A module tensor as a NumPy array sharing its memory, and its ONNX element type (bfloat16,
    which NumPy lacks, as its raw 16-bit words)."""
    import onnx
    import torch

    tensor = tensor.detach().contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy(), onnx.TensorProto.BFLOAT16
    array = tensor.numpy()
    return array, onnx.helper.np_dtype_to_tensor_dtype(array.dtype)


def _append_initializer(graph, name: str, array: np.ndarray, kind: int, handle, location: str) -> None:
    """An initializer `name` whose bytes are appended to `handle` (the file `location`)."""
    import onnx

    tensor = onnx.TensorProto(name=name, dims=array.shape, data_type=kind)
    offset = handle.tell()
    handle.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(array.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    graph.initializer.append(tensor)
