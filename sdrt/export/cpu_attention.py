"""The CPU-fused UNet attention with each layer's weight kept apart.

onnxruntime.transformers' UNet fusion (sdrt.export.onnx_graph.fuse_attention_for_cpu) turns a
self-attention into com.microsoft.Attention, whose input weight packs the layer's Q, K and V
projections into one [C, 3C] initializer (numpy.stack((q, k, v), axis=1) in its
fusion_attention_unet.py). LoRA's weights map finds a layer by the exact bytes of its own weight
(sdrt.export.weights_map), so a packed layer could take no LoRA. Here each such node becomes three
MatMuls on the three original weights (the packed one split back: the same bytes) feeding a
com.microsoft.MultiHeadAttention, the operator the fusion already gives cross-attention: the same
arithmetic with the projections as three products instead of one.
"""

from __future__ import annotations

import numpy as np

MICROSOFT_DOMAIN = "com.microsoft"
PROJECTIONS = ("q", "k", "v")  # the packed weight's column blocks, in order
#: The Attention node this rewrites: input, packed weight, bias (all zeros: the UNet's
#: projections have none), and no attribute but the head count.
ATTENTION_INPUTS = 3
ATTENTION_ATTRIBUTES = {"num_heads"}


def separate_self_attention_weights(model):
    """Rewrites `model` (an onnx ModelProto with its weights loaded) in place and returns it;
    Attention nodes of another form (a nonzero bias, a mask, other attributes) are kept."""
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    nodes, unused = [], set()
    for node in graph.node:
        attributes = {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}
        packed = _packed_weight(node, attributes, initializers)
        if packed is None:
            nodes.append(node)
            continue
        source, weight_name, bias_name = node.input
        columns = packed.reshape(packed.shape[0], len(PROJECTIONS), -1)
        projections = []
        for index, projection in enumerate(PROJECTIONS):
            name = f"{node.name}_{projection}"
            weight = numpy_helper.from_array(np.ascontiguousarray(columns[:, index, :]), f"{name}_weight")
            graph.initializer.append(weight)
            nodes.append(helper.make_node("MatMul", [source, weight.name], [f"{name}_out"], name=f"{name}_matmul"))
            projections.append(f"{name}_out")
        fused = helper.make_node(
            "MultiHeadAttention", projections, list(node.output), name=node.name, domain=MICROSOFT_DOMAIN
        )
        fused.attribute.extend([helper.make_attribute("num_heads", attributes["num_heads"])])
        nodes.append(fused)
        unused.update((weight_name, bias_name))
    still_read = {name for node in nodes for name in node.input}
    kept = [tensor for tensor in graph.initializer if tensor.name not in unused or tensor.name in still_read]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model


def _packed_weight(node, attributes: dict, initializers: dict) -> np.ndarray | None:
    """The packed [C, 3C] weight of a self-attention this can rewrite, else None."""
    from onnx import numpy_helper

    if node.op_type != "Attention" or node.domain != MICROSOFT_DOMAIN or set(attributes) != ATTENTION_ATTRIBUTES:
        return None
    if len(node.input) != ATTENTION_INPUTS or not all(name in initializers for name in node.input[1:]):
        return None
    weight = numpy_helper.to_array(initializers[node.input[1]])
    bias = numpy_helper.to_array(initializers[node.input[2]])
    if weight.ndim != 2 or weight.shape[1] % len(PROJECTIONS) or np.any(bias):
        return None
    return weight
