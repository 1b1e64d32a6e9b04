"""ONNX Runtime CPU fusions for the diffusion transformers' exported graphs (SD3 / SD3.5's MMDiT).

torch.onnx writes diffusers' RMSNorm (the q/k norms) as Pow, ReduceMean, Add, Sqrt, Div, Mul,
Mul and the tanh GELU of the MLPs (`gelu-approximate`) as eight elementwise operators after the
bias Add. ONNX Runtime's own optimizer fuses only some of them: its transpose optimizer moves the
key's head Transpose behind the key norm first, so that norm no longer reduces the last axis and
stays unfused, and no GELU is fused (its saved optimized graph has the GELU's 0.5 folded into the
next MatMul as a FusedMatMul alpha and the other seven operators left as they were). Each
unfused operator is a pass over a whole activation (the image MLP's is 2 x 1024 tokens x 6144 at
512x512), which the CPU pays in memory traffic. Here, before ONNX
Runtime sees the graph, each such RMSNorm becomes one SimplifiedLayerNormalization (ONNX
Runtime's RMS norm kernel: y = x / sqrt(mean(x^2) + epsilon) * scale, in float32) and each GELU
one com.microsoft FastGelu with the bias Add folded in (y = gelu_tanh(x + bias)), both with CPU
kernels. Only the graph changes: the weights file and every initializer's name stay (LoRA weight
maps still apply). These are ONNX Runtime operators: a graph for TensorRT or OpenVINO is not
rewritten (sdrt export --fused-attention, for --target cpu only).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

#: diffusers' tanh GELU constants (GELU(approximate="tanh"), Hendrycks & Gimpel 2016):
#: 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3))).
GELU_CUBIC, GELU_SCALE = 0.044715, math.sqrt(2 / math.pi)
#: Constants in the graph are float32: matched to float32 rounding, relative (2^-23 ~ 1.2e-7).
CONSTANT_RTOL = 1e-6
MICROSOFT_DOMAIN = "com.microsoft"
RMS_NORM_OP, GELU_OP = "SimplifiedLayerNormalization", "FastGelu"
#: SimplifiedLayerNormalization's stash_type: compute in float32 (1 = TensorProto.FLOAT).
FLOAT_STASH = 1


class _Graph:
    """Look-ups over a graph's nodes: producer and consumers of each value, constant values."""

    def __init__(self, graph):
        from onnx import numpy_helper

        self.graph = graph
        self.producer = {name: node for node in graph.node for name in node.output}
        self.consumers: dict[str, list] = defaultdict(list)
        for node in graph.node:
            for name in node.input:
                self.consumers[name].append(node)
        self.initializers = {tensor.name: tensor for tensor in graph.initializer}
        self.constants = {}
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        for tensor in graph.initializer:
            if tensor.data_location != tensor.EXTERNAL and len(tensor.dims) == 0:
                self.constants[tensor.name] = numpy_helper.to_array(tensor)

    def scalar(self, name: str, value: float) -> bool:
        array = self.constants.get(name)
        return array is not None and array.size == 1 and math.isclose(float(array), value, rel_tol=CONSTANT_RTOL)

    def only(self, name: str, op_type: str):
        """The one consumer of `name` if it is an `op_type` node, else None."""
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op_type else None

    def made_by(self, name: str, op_type: str):
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None

    def other_input(self, node, name: str) -> str | None:
        """The input of a binary node that is not `name` (None if `name` is not one of them)."""
        first, second = node.input
        return second if first == name else first if second == name else None


def fuse(graph) -> dict[str, int]:
    """Rewrite `graph` (an onnx GraphProto) in place; returns how many of each were fused."""
    g = _Graph(graph)
    norms, gelus = _rms_norms(g), _tanh_gelus(g)
    _replace(graph, norms + gelus)
    return {RMS_NORM_OP: len(norms), GELU_OP: len(gelus)}


def fuse_file(source: Path, destination: Path) -> dict[str, int]:
    """`fuse` on an ONNX file whose weights stay in its external data file: the graph alone is
    read and written (`destination` beside the same data file, or `source` itself)."""
    import onnx

    model = onnx.load_model(str(source), load_external_data=False)
    counts = fuse(model.graph)
    if counts[GELU_OP] and not any(entry.domain == MICROSOFT_DOMAIN for entry in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(MICROSOFT_DOMAIN, 1))
    onnx.save_model(model, str(destination))
    return counts


def _replace(graph, fusions: list[tuple[list, object]]) -> None:
    """Each (nodes, fused node): the nodes removed, the fused node put where the first of them
    was (its inputs are made before that node; its output is read after the last)."""
    group = {id(node): index for index, (nodes, _) in enumerate(fusions) for node in nodes}
    placed: set[int] = set()
    kept = []
    for node in graph.node:
        index = group.get(id(node))
        if index is None:
            kept.append(node)
        elif index not in placed:
            placed.add(index)
            kept.append(fusions[index][1])
    read = {name for node in kept for name in node.input} | {output.name for output in graph.output}
    kept = [node for node in kept if node.op_type != "Constant" or node.output[0] in read]  # left unused
    del graph.node[:]
    graph.node.extend(kept)


def _rms_norms(g: _Graph) -> list[tuple[list, object]]:
    """x * (1 / sqrt(mean(x^2, -1) + eps)) * weight (diffusers' RMSNorm, also with x / sqrt)."""
    from onnx import helper

    found = []
    for pow_node in [node for node in g.graph.node if node.op_type == "Pow"]:
        x = pow_node.input[0]
        if not g.scalar(pow_node.input[1], 2.0):
            continue
        mean = g.only(pow_node.output[0], "ReduceMean")
        if mean is None or _axes(mean) != [-1] or not _keepdims(mean):
            continue
        add = g.only(mean.output[0], "Add")
        eps_name = add and g.other_input(add, mean.output[0])
        if add is None or eps_name not in g.constants or g.constants[eps_name].size != 1:
            continue
        sqrt = g.only(add.output[0], "Sqrt")
        div = sqrt and g.only(sqrt.output[0], "Div")
        if div is None or div.input[1] != sqrt.output[0]:
            continue
        if g.scalar(div.input[0], 1.0):  # x * (1 / sqrt)
            mul = g.only(div.output[0], "Mul")
            if mul is None or g.other_input(mul, div.output[0]) != x:
                continue
            chain = [pow_node, mean, add, sqrt, div, mul]
        elif div.input[0] == x:  # x / sqrt
            mul, chain = div, [pow_node, mean, add, sqrt, div]
        else:
            continue
        scale = g.only(mul.output[0], "Mul")
        weight = scale and g.other_input(scale, mul.output[0])
        if weight not in g.initializers or len(g.initializers[weight].dims) != 1:
            continue
        epsilon = float(g.constants[eps_name].reshape(()))
        fused = helper.make_node(
            RMS_NORM_OP,
            [x, weight],
            [scale.output[0]],
            name=f"{scale.name}/{RMS_NORM_OP}",
            axis=-1,
            epsilon=epsilon,
            stash_type=FLOAT_STASH,
        )
        found.append(([*chain, scale], fused))
    return found


def _tanh_gelus(g: _Graph) -> list[tuple[list, object]]:
    """0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x * x * x))), x = MatMul + bias."""
    from onnx import helper

    found = []
    for tanh in [node for node in g.graph.node if node.op_type == "Tanh"]:
        inner = g.made_by(tanh.input[0], "Mul")
        if inner is None:
            continue
        (scale_name,) = [name for name in inner.input if g.scalar(name, GELU_SCALE)] or [None]
        sum_node = scale_name and g.made_by(g.other_input(inner, scale_name), "Add")
        if sum_node is None:
            continue
        x, cubic = _split_cubic(g, sum_node)
        if x is None:
            continue
        one = g.only(tanh.output[0], "Add")
        if one is None or not g.scalar(g.other_input(one, tanh.output[0]), 1.0):
            continue
        times_x = g.only(one.output[0], "Mul")
        if times_x is None or g.other_input(times_x, one.output[0]) != x:
            continue
        half = g.only(times_x.output[0], "Mul")
        if half is None or not g.scalar(g.other_input(half, times_x.output[0]), 0.5):
            continue
        chain = [*cubic, sum_node, inner, tanh, one, times_x, half]
        if {id(node) for node in g.consumers[x]} - {id(node) for node in chain}:
            continue  # x is also read elsewhere: not ours to fold
        inputs, bias_add = [x], _bias_add(g, x)
        if bias_add is not None:
            inputs = list(bias_add)
            chain.append(g.producer[x])
        fused = helper.make_node(
            GELU_OP, inputs, [half.output[0]], name=f"{half.name}/{GELU_OP}", domain=MICROSOFT_DOMAIN
        )
        found.append((chain, fused))
    return found


def _split_cubic(g: _Graph, sum_node):
    """Add(x, 0.044715 * (x * (x * x))) -> (x, its nodes), else (None, [])."""
    for x in sum_node.input:
        term = g.made_by(g.other_input(sum_node, x), "Mul")
        if term is None:
            continue
        rest = [name for name in term.input if not g.scalar(name, GELU_CUBIC)]
        cube = g.made_by(rest[0], "Mul") if len(rest) == 1 else None
        square = cube and g.made_by(g.other_input(cube, x), "Mul")
        if square is not None and list(square.input) == [x, x]:
            return x, [square, cube, term]
    return None, []


def _bias_add(g: _Graph, x: str) -> tuple[str, str] | None:
    """(MatMul output, bias) when `x` is MatMul + a 1-D bias initializer, else None."""
    add = g.made_by(x, "Add")
    if add is None:
        return None
    for bias in add.input:
        other = g.other_input(add, bias)
        if bias in g.initializers and len(g.initializers[bias].dims) == 1 and g.made_by(other, "MatMul"):
            return other, bias
    return None


def _axes(node) -> list[int] | None:
    for attribute in node.attribute:
        if attribute.name == "axes":
            return list(attribute.ints)
    return None


def _keepdims(node) -> bool:
    return all(attribute.i for attribute in node.attribute if attribute.name == "keepdims")
