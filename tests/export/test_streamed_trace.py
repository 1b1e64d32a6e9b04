"""The weight-free trace (sdrt.export.streamed_trace) against PyTorch: same outputs in ONNX Runtime,
no weight bytes in the graph's proto, each weight once in the data file, Linear weights stored
transposed as the exporter's constant folding stored them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import torch

from sdrt.export.streamed_trace import export_streamed

WIDTH = 32


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(WIDTH, 4 * WIDTH)
        self.norm = torch.nn.LayerNorm(4 * WIDTH)
        self.down = torch.nn.Linear(4 * WIDTH, WIDTH)
        self.register_buffer("offset", torch.randn(WIDTH))
        with torch.no_grad():
            self.norm.weight.normal_()

    def forward(self, x):
        return self.down(torch.nn.functional.gelu(self.norm(self.up(x)))) + self.offset


@dataclass
class Spec:
    name: str


@dataclass
class Component:
    module: torch.nn.Module
    inputs: list
    outputs: list

    def dynamic_axes(self):
        return {"x": {0: "batch", 1: "tokens"}, "y": {0: "batch", 1: "tokens"}}


def test_weights_stream_to_the_data_file_and_the_graph_equals_pytorch(tmp_path):
    torch.manual_seed(0)
    module = Block().eval()
    component = Component(module, [Spec("x")], [Spec("y")])
    path = tmp_path / "model.onnx"
    files = export_streamed(component, path, [np.random.default_rng(0).standard_normal((1, 5, WIDTH), np.float32)])
    assert files == [path, tmp_path / "model.onnx.data"]
    weight_bytes = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    assert files[1].stat().st_size == weight_bytes  # every weight once, in the data file
    proto = onnx.load_model(str(path), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.EXTERNAL and not t.raw_data for t in proto.graph.initializer)
    assert [i.name for i in proto.graph.input] == ["x"]
    stored = {t.name: onnx.numpy_helper.to_array(t, str(tmp_path)) for t in proto.graph.initializer}
    up = module.up.weight.detach().numpy()
    assert any(a.shape == up.T.shape and np.array_equal(a, up.T) for a in stored.values())  # folded Transpose
    assert not any(n.op_type == "Transpose" and n.input[0] in stored for n in proto.graph.node)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((2, 7, WIDTH), np.float32)  # another shape than traced
    (got,) = session.run(["y"], {"x": x})
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    # fp32 sums of 4 * WIDTH products in another order: far under 1e-5 of the outputs' scale
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()
