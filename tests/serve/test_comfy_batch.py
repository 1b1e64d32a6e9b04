"""ComfyUI's latent batch nodes on `sdrt serve`: LatentFromBatch and RepeatLatentBatch record each
image's batch_index, and a KSampler's noise follows it (comfy/sample.py prepare_noise with
noise_inds, written independently in tests/support/comfy_reference.py), so an image taken from a
batch is the image it was in the batch."""

from __future__ import annotations

import copy
import io
import time

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from sdrt.runtime.pipeline import Pipeline
from sdrt.runtime.rng import IndexedDraws, TorchGenerator
from sdrt.serve.app import create_app
from sdrt.serve.schemas import ServeSettings
from support.comfy_reference import ComfyModelSampling, comfy_encode, comfy_ksampler, prepare_noise_with_indices
from support.serving import live_server

SEED, STEPS, CFG, SIZE = 8566257, 2, 7.5, 64
POSITIVE, NEGATIVE = "a red fox in the snow", "text, watermark"
#: Four images (the server's --max-images), two of them taken from the second on (LatentFromBatch),
#: then those two twice (RepeatLatentBatch: indices 1, 2, 3, 4).
BATCH, FIRST, LENGTH, REPEAT = 4, 1, 2, 2
WAIT_S, POLL_S = 120, 0.05
#: TorchGenerator against torch.randn: torch's SIMD log/sin/cos are a few float32 ulps off
#: exactly rounded values (tests/runtime/test_rng.py's bound).
GENERATOR_ULPS = 1e-6


def _workflow(batch: int, take: tuple[int, int] | None = None, repeat: int | None = None) -> dict:
    latent = ["5", 0]
    workflow = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "standard.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"batch_size": batch, "height": SIZE, "width": SIZE}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": POSITIVE}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": NEGATIVE}},
    }
    if take is not None:
        workflow["10"] = {
            "class_type": "LatentFromBatch",
            "inputs": {"samples": latent, "batch_index": take[0], "length": take[1]},
        }
        latent = ["10", 0]
    if repeat is not None:
        workflow["11"] = {"class_type": "RepeatLatentBatch", "inputs": {"samples": latent, "amount": repeat}}
        latent = ["11", 0]
    sampler = dict(cfg=CFG, denoise=1, seed=SEED, steps=STEPS, sampler_name="euler", scheduler="normal")
    workflow["3"] = {
        "class_type": "KSampler",
        "inputs": {**sampler, "latent_image": latent, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0]},
    }
    workflow["8"] = {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}}
    workflow["9"] = {"class_type": "SaveImage", "inputs": {"filename_prefix": "batch", "images": ["8", 0]}}
    return workflow


@pytest.fixture(scope="module")
def server(exported_tiny, tmp_path_factory):
    settings = ServeSettings(comfy_dir=str(tmp_path_factory.mktemp("comfy-batch")))
    with live_server(create_app(Pipeline.load(exported_tiny("standard")), settings)) as base:
        yield base


def _images(server, workflow) -> np.ndarray:
    prompt_id = httpx.post(server + "/prompt", json={"prompt": workflow}, timeout=WAIT_S).json()["prompt_id"]
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        history = httpx.get(f"{server}/history/{prompt_id}").json()
        if prompt_id in history:
            break
        time.sleep(POLL_S)
    entry = history[prompt_id]
    assert entry["status"]["completed"], entry["status"]
    saved = entry["outputs"]["9"]["images"]
    views = [httpx.get(server + "/view", params=image).content for image in saved]
    return np.stack([np.asarray(Image.open(io.BytesIO(view)).convert("RGB")) for view in views])


@pytest.fixture(scope="module")
def reference(tiny_models):
    from conftest import diffusers_pipeline

    return diffusers_pipeline("StableDiffusionPipeline", tiny_models["standard"])


def _reference_images(pipe, noise_inds: list[int]) -> np.ndarray:
    """ComfyUI's KSampler (euler) on diffusers' UNet with prepare_noise's draws for the indices."""
    batch = len(noise_inds)
    cond, uncond = (comfy_encode(pipe, text).repeat(batch, 1, 1) for text in (POSITIVE, NEGATIVE))
    s = ComfyModelSampling(dict(pipe.scheduler.config))
    zeros = torch.zeros(batch, pipe.unet.config.in_channels, SIZE // 8, SIZE // 8)
    latents = comfy_ksampler(
        pipe.unet, s, cond, uncond, "euler", "normal", STEPS, CFG, SEED, zeros, noise_inds=noise_inds
    )
    with torch.no_grad():
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return np.round((image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)


def _assert_close(got: np.ndarray, expected: np.ndarray) -> None:
    difference = np.abs(got.astype(np.int16) - expected.astype(np.int16))
    assert difference.max() <= 2 and difference.mean() <= 0.5, (difference.max(), difference.mean())
    assert expected.std() > 2, "a flat reference would make the comparison vacuous"


def test_indexed_draws_are_comfyuis_prepare_noise():
    """Repeated, unordered and skipped indices: each row the generator's draw of its index."""
    latent = torch.zeros(6, 4, 3, 5)  # 60 values a row: not a multiple of torch's 16-value blocks
    for indices in ([0, 1, 2, 3, 4, 5], [3, 1, 3, 0, 7, 2]):
        expected = prepare_noise_with_indices(latent, SEED, indices).numpy()
        got = IndexedDraws(TorchGenerator(SEED), tuple(indices)).randn(latent.shape)
        assert np.abs(got - expected).max() <= GENERATOR_ULPS, indices
    whole = torch.randn(latent.size(), generator=torch.manual_seed(SEED)).numpy()
    in_order = IndexedDraws(TorchGenerator(SEED), tuple(range(6))).randn(latent.shape)
    assert np.abs(in_order - whole).max() > 1  # per-image draws are not one batch draw at this size
    with pytest.raises(ValueError, match="draw 6 rows"):
        IndexedDraws(TorchGenerator(SEED), tuple(range(6))).randn((5, 4, 3, 5))


def test_latent_from_batch_and_repeat_follow_the_batch_index(server, reference):
    """LatentFromBatch's images are the batch's own images at their indices; RepeatLatentBatch
    continues the indices past the last (ComfyUI's offset); both equal ComfyUI's KSampler."""
    whole = _images(server, _workflow(BATCH))
    taken = _images(server, _workflow(BATCH, take=(FIRST, LENGTH)))
    assert taken.shape[0] == LENGTH
    _assert_close(taken, whole[FIRST : FIRST + LENGTH])
    _assert_close(taken, _reference_images(reference, list(range(FIRST, FIRST + LENGTH))))

    repeated = _images(server, _workflow(BATCH, take=(FIRST, LENGTH), repeat=REPEAT))
    indices = [FIRST + i + r * LENGTH for r in range(REPEAT) for i in range(LENGTH)]  # 1, 2, 3, 4
    assert repeated.shape[0] == LENGTH * REPEAT
    _assert_close(repeated, _reference_images(reference, indices))
    _assert_close(repeated[:LENGTH], taken)
    assert not np.array_equal(repeated[LENGTH:], repeated[:LENGTH])  # its own noise, not a copy


def test_a_batch_index_past_the_batch_takes_its_last_image(server):
    """ComfyUI clamps batch_index to the batch and length to what is left."""
    images = _images(server, _workflow(2, take=(7, 4)))
    assert images.shape[0] == 1
    workflow = copy.deepcopy(_workflow(2, take=(7, 4)))
    workflow["10"]["inputs"]["batch_index"] = 64  # past ComfyUI's maximum, 63
    body = httpx.post(server + "/prompt", json={"prompt": workflow}, timeout=WAIT_S).json()
    assert body["node_errors"]["10"]["class_type"] == "LatentFromBatch"
