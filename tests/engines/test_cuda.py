"""The cuda backend on a real GPU: fp16 CUDA-optimized export, IO binding, CUDA graphs. Every
test here needs an NVIDIA GPU with onnxruntime-gpu and skips without one (the IO-binding logic
itself is tested on the CPU in test_io_binding.py)."""

from __future__ import annotations

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(),
    reason="needs an NVIDIA GPU and onnxruntime-gpu with its CUDAExecutionProvider (pip install -e '.[gpu]')",
)


@pytest.fixture(scope="module")
def fp16_cuda_export(tiny_models, tmp_path_factory):
    from sdrt.export.exporter import ExportOptions, export_model

    out = tmp_path_factory.mktemp("cuda") / "tiny-fp16"
    export_model(
        str(tiny_models["standard"]),
        out,
        options=ExportOptions(precision="fp16", target="cuda", optimize=True),
        progress=lambda line: None,
    )
    return out


def test_cuda_backend_matches_the_cpu_path_within_the_fp16_tolerance(fp16_cuda_export):
    from sdrt.runtime.verify import MEAN_TOLERANCE, verify

    report = verify(fp16_cuda_export, "cuda", steps=8)
    assert report["finite"] and report["mean_abs"] <= MEAN_TOLERANCE, report


def test_cuda_graphs_change_nothing_but_speed(fp16_cuda_export):
    from sdrt.runtime.pipeline import Pipeline

    plain = Pipeline.load(fp16_cuda_export, backend="cuda")
    graphed = Pipeline.load(fp16_cuda_export, backend="cuda", cuda_graph=True)
    for batch in (1, 2, 1):  # a second shape gets its own graph; the first is replayed after
        prompts = ["a photo of a cat"] * batch
        expected = plain.generate(prompts, steps=6, seed=list(range(batch))).array
        got = graphed.generate(prompts, steps=6, seed=list(range(batch))).array
        np.testing.assert_allclose(got, expected, atol=1 / 255)


def test_host_copies_stay_small_next_to_the_unet(fp16_cuda_export):
    from sdrt.runtime.pipeline import Pipeline

    pipeline = Pipeline.load(fp16_cuda_export, backend="cuda")
    pipeline.generate("warm-up", steps=2, seed=0)
    timings = pipeline.generate("a photo of a cat", steps=10, seed=1).timings
    assert timings["unet_host_copies"] < sum(timings["unet_steps"])
