"""The engine's input checks: every mismatch is an error that names the tensor."""

from __future__ import annotations

import numpy as np
import pytest

from sdrt.errors import ConfigError
from sdrt.runtime.engines.base import Engine, EngineInputError, EngineRunError
from sdrt.runtime.engines.onnxruntime import OrtEngine, provider_for
from sdrt.runtime.manifest import ComponentSpec, DimRange, TensorSpec

DIMS = {
    "unet_batch": DimRange(1, 2, 16),
    "latent_height": DimRange(2, 8, 16, 2),
    "latent_width": DimRange(2, 8, 16, 2),
    "timestep_batch": DimRange(1, 1, 16),
}
SPEC = ComponentSpec(
    file="unet/model.onnx",
    precision="fp32",
    target="cpu",
    sha256="0" * 64,
    inputs=[
        TensorSpec("sample", "float32", ["unet_batch", 4, "latent_height", "latent_width"]),
        TensorSpec("timestep", "float32", ["timestep_batch"]),
        TensorSpec("encoder_hidden_states", "float32", ["unet_batch", 77, 32]),
    ],
    outputs=[TensorSpec("out_sample", "float32", ["unet_batch", 4, "latent_height", "latent_width"])],
)


class EchoEngine(Engine):
    def _run(self, feeds, dims):
        return {"out_sample": feeds["sample"]}


def feeds(batch=2, height=8, width=12, context_batch=None, dtype=np.float32):
    return {
        "sample": np.zeros((batch, 4, height, width), dtype),
        "timestep": np.zeros((1,), np.float32),
        "encoder_hidden_states": np.zeros((context_batch or batch, 77, 32), np.float32),
    }


def test_valid_feeds_run_and_report_dims():
    engine = EchoEngine("unet", SPEC, DIMS)
    assert engine.check(feeds()) == {"unet_batch": 2, "latent_height": 8, "latent_width": 12, "timestep_batch": 1}
    assert engine.run(feeds())["out_sample"].shape == (2, 4, 8, 12)


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(dtype=np.float16), "unet.sample: dtype float16, the engine takes float32"),
        (dict(height=7), r"unet.sample: latent_height 7 is outside the exported range 2..16 in steps of 2"),
        (dict(width=18), r"unet.sample: latent_width 18 is outside the exported range 2..16"),
        (dict(batch=17, context_batch=17), r"unet.sample: unet_batch 17 is outside the exported range 1..16"),
        (dict(context_batch=4), "unet.encoder_hidden_states: unet_batch is 4 but 2 in sample"),
    ],
)
def test_bad_feeds_name_the_tensor(bad, message):
    with pytest.raises(EngineInputError, match=message):
        EchoEngine("unet", SPEC, DIMS).run(feeds(**bad))


def test_wrong_rank_fixed_size_and_names():
    engine = EchoEngine("unet", SPEC, DIMS)
    wrong_rank = dict(feeds(), timestep=np.zeros((1, 1), np.float32))
    with pytest.raises(EngineInputError, match=r"unet.timestep: shape \[1, 1\] has rank 2"):
        engine.run(wrong_rank)
    wrong_text = dict(feeds(), encoder_hidden_states=np.zeros((2, 76, 32), np.float32))
    with pytest.raises(EngineInputError, match="unet.encoder_hidden_states: axis 1 is 76, the engine takes 77"):
        engine.run(wrong_text)
    renamed = feeds()
    renamed["latents"] = renamed.pop("sample")
    with pytest.raises(EngineInputError, match=r"missing inputs \['sample'\], unknown inputs \['latents'\]"):
        engine.run(renamed)


def test_allocation_failure_becomes_a_clear_error():
    class FailingSession:
        def run(self, names, feeds):
            raise RuntimeError(
                "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested buffer"
            )

    engine = OrtEngine.__new__(OrtEngine)
    Engine.__init__(engine, "unet", SPEC, DIMS)
    engine.session = FailingSession()
    with pytest.raises(EngineRunError, match="unet ran out of memory: generate fewer images at once or a smaller size"):
        engine.run(feeds())


def test_unknown_or_missing_backend():
    with pytest.raises(ConfigError, match="unknown backend 'tpu'"):
        provider_for("tpu")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ConfigError, match="needs ONNX Runtime's CUDAExecutionProvider"):
            provider_for("cuda")


@pytest.mark.parametrize("setting", ["0", "1"])
def test_ort_spinning_follows_the_environment(exported_tiny, monkeypatch, setting):
    """SDRT_ORT_SPINNING=0 turns ONNX Runtime's spinning off; otherwise nothing is set (its default)."""
    from sdrt.runtime.engines.onnxruntime import SPINNING_ENV, open_session

    monkeypatch.setenv(SPINNING_ENV, setting)
    session = open_session(exported_tiny("standard") / "vae_decoder" / "model.onnx", "cpu", None)
    options = session.get_session_options()
    try:
        entry = options.get_session_config_entry("session.intra_op.allow_spinning")
    except RuntimeError:  # ONNX Runtime's answer for an entry never set
        entry = None
    assert entry == ("0" if setting == "0" else None)
