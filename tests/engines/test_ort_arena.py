"""CPU sessions share one ONNX Runtime arena (sdrt.runtime.engines.ort_arena), and still compute right."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from sdrt.runtime.engines import ort_arena
from sdrt.runtime.engines.onnxruntime import open_session


def _matmul_model(path, weight: np.ndarray):
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", weight.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", weight.shape[1]])],
        [onnx.numpy_helper.from_array(weight, "w")],
    )
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _uses_env_allocators(session) -> bool:
    try:
        return session.get_session_options().get_session_config_entry(ort_arena.USE_ENV_ALLOCATORS) == "1"
    except Exception:  # onnxruntime raises when the entry was never set
        return False


def test_cpu_sessions_share_one_arena_and_match_numpy(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((16, 8), dtype=np.float32), rng.standard_normal((16, 4), dtype=np.float32)]
    sessions = [open_session(_matmul_model(tmp_path / f"{i}.onnx", w), "cpu") for i, w in enumerate(weights)]
    x = rng.standard_normal((3, 16), dtype=np.float32)
    for session, weight in zip(sessions, weights):
        assert _uses_env_allocators(session)
        np.testing.assert_allclose(session.run(None, {"x": x})[0], x @ weight, rtol=1e-5, atol=1e-5)
    monkeypatch.setenv(ort_arena.SWITCH_ENV, "0")
    assert not _uses_env_allocators(open_session(tmp_path / "0.onnx", "cpu"))
