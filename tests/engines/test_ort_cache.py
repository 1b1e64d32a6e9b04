"""The per-machine cache of optimized ONNX Runtime graphs: the second load opens the saved
graph with optimizations off and gives the same outputs; anything wrong with the cache falls
back to an ordinary load."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from sdrt.runtime.engines import ort_cache
from sdrt.runtime.engines.onnxruntime import OrtEngine
from sdrt.runtime.manifest import Manifest
from sdrt.runtime.pipeline import Pipeline


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SDRT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "ort"


@pytest.fixture(scope="module")
def folder(exported_tiny):
    return exported_tiny("standard")


def unet(folder, **changes):
    manifest = Manifest.load(folder)
    spec = replace(manifest.components["unet"], **changes)
    return OrtEngine(folder / spec.file, "unet", spec, manifest.dims)


def feeds():
    rng = np.random.default_rng(0)
    return {
        "sample": rng.standard_normal((2, 4, 8, 8)).astype(np.float32),
        "timestep": np.array([10.0], np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, 32)).astype(np.float32),
    }


def test_second_load_uses_the_saved_graph_with_the_same_outputs(folder, cache, monkeypatch):
    first = unet(folder)
    (entry,) = cache.iterdir()
    assert (entry / ort_cache.COMPLETE_FILE).is_file() and (entry / ort_cache.MODEL_FILE).is_file()
    opened = []
    import onnxruntime as ort

    original = ort.InferenceSession

    def spy(path, options=None, **kwargs):
        opened.append((path, options.graph_optimization_level))
        return original(path, options, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    second = unet(folder)
    assert opened == [(str(entry / ort_cache.MODEL_FILE), ort.GraphOptimizationLevel.ORT_DISABLE_ALL)]
    np.testing.assert_array_equal(second.run(feeds())["out_sample"], first.run(feeds())["out_sample"])


def test_another_onnx_file_or_machine_gets_its_own_entry(folder, cache, monkeypatch):
    unet(folder)
    unet(folder, sha256="f" * 64)
    assert len(list(cache.iterdir())) == 2
    monkeypatch.setattr(ort_cache, "cpu_identity", lambda: {"flags": "other cpu"})
    unet(folder)
    assert len(list(cache.iterdir())) == 3


def test_damaged_or_interrupted_entries_are_rebuilt(folder, cache):
    expected = unet(folder).run(feeds())["out_sample"]
    (entry,) = cache.iterdir()
    (entry / ort_cache.MODEL_FILE).write_bytes(b"not an onnx file")
    np.testing.assert_array_equal(unet(folder).run(feeds())["out_sample"], expected)
    assert (entry / ort_cache.COMPLETE_FILE).is_file()  # saved again
    (entry / ort_cache.COMPLETE_FILE).unlink()  # as if a save was interrupted
    np.testing.assert_array_equal(unet(folder).run(feeds())["out_sample"], expected)
    assert (entry / ort_cache.COMPLETE_FILE).is_file()
    assert json.loads((entry / ort_cache.COMPLETE_FILE).read_text())["sha256"]


def test_an_unwritable_cache_is_skipped(folder, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("SDRT_CACHE", str(blocker))
    skipped = unet(folder).run(feeds())["out_sample"]
    monkeypatch.setenv("SDRT_ORT_CACHE", "0")
    np.testing.assert_array_equal(skipped, unet(folder).run(feeds())["out_sample"])
    assert blocker.is_file()  # nothing was written in its place


def test_the_cache_can_be_turned_off(folder, cache, monkeypatch):
    monkeypatch.setenv("SDRT_ORT_CACHE", "0")
    unet(folder)
    assert not cache.exists()


def test_cached_pipeline_images_equal_uncached(folder, cache, monkeypatch):
    fresh = Pipeline.load(folder).generate("a cat", steps=3, seed=4).array
    cached = Pipeline.load(folder).generate("a cat", steps=3, seed=4).array
    monkeypatch.setenv("SDRT_ORT_CACHE", "0")
    plain = Pipeline.load(folder).generate("a cat", steps=3, seed=4).array
    np.testing.assert_array_equal(cached, fresh)
    np.testing.assert_array_equal(cached, plain)
    assert len(list(cache.iterdir())) == 3  # text encoder, UNet, VAE decoder


def test_finite_values_written_into_a_warm_entry_are_caught_and_the_entry_rebuilt(folder, cache, capsys):
    import onnxruntime as ort

    expected = unet(folder).run(feeds())["out_sample"]
    (entry,) = cache.iterdir()
    data = entry / ort_cache.DATA_FILE
    assert data.is_file() and set(json.loads((entry / ort_cache.COMPLETE_FILE).read_text())["files"]) == {
        ort_cache.MODEL_FILE,
        ort_cache.DATA_FILE,
    }
    weights = np.frombuffer(data.read_bytes(), np.float32).copy()
    weights[: weights.size // 2] = 0.5  # finite, the same size: only a digest tells
    data.write_bytes(weights.tobytes())
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    damaged = ort.InferenceSession(str(entry / ort_cache.MODEL_FILE), options, providers=["CPUExecutionProvider"])
    assert not np.array_equal(damaged.run(None, feeds())[0], expected)  # what an unchecked entry served
    capsys.readouterr()
    np.testing.assert_array_equal(unet(folder).run(feeds())["out_sample"], expected)
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 1 and "damaged" in warnings[0] and ort_cache.DATA_FILE in warnings[0], warnings
    assert ort_cache.damage(entry) is None  # rebuilt, and trusted again
    np.testing.assert_array_equal(unet(folder).run(feeds())["out_sample"], expected)
    assert not capsys.readouterr().err


def test_an_entry_without_a_record_of_its_files_is_rebuilt(folder, cache, capsys):
    expected = unet(folder).run(feeds())["out_sample"]
    (entry,) = cache.iterdir()
    complete = entry / ort_cache.COMPLETE_FILE
    complete.write_text(json.dumps({"sha256": "0" * 64}))  # as an older sdrt wrote it
    assert ort_cache.complete_entry(Manifest.load(folder).components["unet"]) is None
    np.testing.assert_array_equal(unet(folder).run(feeds())["out_sample"], expected)
    assert "files" in json.loads(complete.read_text())
    assert "warning" not in capsys.readouterr().err, "an older sdrt's entry is rebuilt without a word"
