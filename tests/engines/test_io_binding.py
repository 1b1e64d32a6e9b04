"""IO binding (the cuda backend's engine, BoundOrtEngine), checked on the CPU device: the same
outputs as plain session.run for every shape, buffers reused per shape, read-only inputs
uploaded once, and the same images end to end. CUDA-only parts (the device itself, CUDA graphs)
are in test_cuda.py, which needs a GPU."""

from __future__ import annotations

import numpy as np
import pytest

from sdrt.errors import ConfigError
from sdrt.runtime.engines.onnxruntime import BoundOrtEngine, OrtEngine
from sdrt.runtime.manifest import Manifest
from sdrt.runtime.pipeline import Pipeline


@pytest.fixture(scope="module")
def folder(exported_tiny):
    return exported_tiny("standard")


def engines(folder, name):
    manifest = Manifest.load(folder)
    spec = manifest.components[name]
    path = folder / spec.file
    return (
        OrtEngine(path, name, spec, manifest.dims, backend="cpu"),
        BoundOrtEngine(path, name, spec, manifest.dims, backend="cpu"),
    )


def unet_feeds(rng, batch, side, context=None):
    return {
        "sample": rng.standard_normal((batch, 4, side, side)).astype(np.float32),
        "timestep": np.array([500.0], np.float32),
        "encoder_hidden_states": context
        if context is not None
        else rng.standard_normal((batch, 77, 32)).astype(np.float32),
    }


def test_bound_unet_equals_plain_run_across_shapes_and_reuses_buffers(folder):
    plain, bound = engines(folder, "unet")
    rng = np.random.default_rng(0)
    for batch, side in ((2, 8), (4, 6), (2, 8)):  # the third call reuses the first shape's buffers
        feeds = unet_feeds(rng, batch, side)
        expected = plain.run(feeds)["out_sample"]
        got = bound.run(feeds)["out_sample"]
        np.testing.assert_array_equal(got, expected)
    assert len(bound._shapes) == 2
    assert bound.last_copy_seconds > 0


def test_outputs_are_not_overwritten_by_the_next_call(folder):
    _, bound = engines(folder, "unet")
    rng = np.random.default_rng(1)
    first = bound.run(unet_feeds(rng, 2, 8))["out_sample"]
    kept = first.copy()
    bound.run(unet_feeds(rng, 2, 8))
    np.testing.assert_array_equal(first, kept)


def test_read_only_inputs_are_uploaded_once_and_new_ones_again(folder):
    plain, bound = engines(folder, "unet")
    rng = np.random.default_rng(2)
    context = rng.standard_normal((2, 77, 32)).astype(np.float32)
    context.flags.writeable = False
    for _ in range(2):
        feeds = unet_feeds(rng, 2, 8, context)
        np.testing.assert_array_equal(bound.run(feeds)["out_sample"], plain.run(feeds)["out_sample"])
    (shape,) = bound._shapes.values()
    assert shape.uploaded["encoder_hidden_states"] is context  # kept on the device
    other = rng.standard_normal((2, 77, 32)).astype(np.float32)
    other.flags.writeable = False
    feeds = unet_feeds(rng, 2, 8, other)
    np.testing.assert_array_equal(bound.run(feeds)["out_sample"], plain.run(feeds)["out_sample"])


def test_outputs_whose_size_the_inputs_do_not_fix_are_allocated_by_ort(folder):
    plain, bound = engines(folder, "vae_decoder")
    latents = {"latent_sample": np.random.default_rng(3).standard_normal((2, 4, 8, 6)).astype(np.float32)}
    np.testing.assert_array_equal(bound.run(latents)["sample"], plain.run(latents)["sample"])
    assert bound.run(latents)["sample"].shape == (2, 3, 64, 48)


def test_pipeline_with_io_binding_gives_the_same_images(folder, tmp_path):
    from PIL import Image

    plain = Pipeline.load(folder)
    bound = Pipeline.load(folder, io_binding=True)
    image = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(4).random((64, 64, 3)) * 255).astype(np.uint8)).save(image)
    for settings in (
        dict(prompt="a cat", steps=3, seed=1),
        dict(prompt=["a", "b"], steps=2, seed=[1, 2]),
        dict(prompt="a cat", steps=4, seed=2, init_image=image, strength=0.5),
    ):
        expected = plain.generate(**settings)
        got = bound.generate(**settings)
        np.testing.assert_array_equal(got.array, expected.array)
    assert got.timings["unet_host_copies"] > 0 and "unet_host_copies" not in expected.timings


@pytest.mark.parametrize("settings, message", [(dict(cuda_graph=True), "CUDA graphs need the cuda backend")])
def test_cuda_graph_settings_are_checked(folder, settings, message):
    with pytest.raises(ConfigError, match=message):
        Pipeline.load(folder, **settings)
