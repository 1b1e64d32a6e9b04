"""ComfyUI's API on `sdrt serve`, driven by a ComfyUI client package from PyPI
(comfy-api-simplified: HTTP + websocket) with ComfyUI's standard API-format workflow."""

from __future__ import annotations

import copy
import io
import json
import math
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from sdrt.runtime.pipeline import Pipeline
from sdrt.serve.app import create_app
from sdrt.serve.schemas import ServeSettings
from support.serving import live_server

#: ComfyUI's default workflow in its API format (as "Save (API Format)" writes it), the checkpoint
#: named as ComfyUI clients name files.
TXT2IMG = {
    "3": {
        "class_type": "KSampler",
        "inputs": {
            "cfg": 7.5,
            "denoise": 1,
            "latent_image": ["5", 0],
            "model": ["4", 0],
            "negative": ["7", 0],
            "positive": ["6", 0],
            "sampler_name": "euler",
            "scheduler": "normal",
            "seed": 8566257,
            "steps": 3,
        },
    },
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "standard.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"batch_size": 1, "height": 64, "width": 64}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "a red fox in the snow"}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "text, watermark"}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {
        "class_type": "SaveImage",
        "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]},
        "_meta": {"title": "Save Image"},
    },
}
# ComfyUI's API export gives every node a title; clients find their output node by it.
for _node in TXT2IMG.values():
    _node.setdefault("_meta", {"title": _node["class_type"]})
WAIT_S = 120


@pytest.fixture(scope="module")
def controlnet(tiny_controlnets) -> Path:
    """The tiny `edges` ControlNet (a diffusers folder); the server's --controlnet-dir has its export."""
    return tiny_controlnets["edges"]


@pytest.fixture(scope="module")
def pipeline(exported_tiny, controlnet) -> Pipeline:
    return Pipeline.load(exported_tiny("standard"), controlnet_dir=controlnet.parent.parent / "exported")


@pytest.fixture(scope="module")
def server(pipeline, tmp_path_factory):
    settings = ServeSettings(comfy_dir=str(tmp_path_factory.mktemp("comfy")))
    with live_server(create_app(pipeline, settings)) as base:
        yield base


@pytest.fixture(scope="module")
def reference(tiny_models):
    from conftest import diffusers_pipeline

    return diffusers_pipeline("StableDiffusionPipeline", tiny_models["standard"])


def _encode(reference, workflow, batch: int):
    """CLIPTextEncode as ComfyUI encodes (its weights, its padding), per image of the batch."""
    from support.comfy_reference import comfy_encode

    texts = workflow["6"]["inputs"]["text"], workflow["7"]["inputs"]["text"]
    return [comfy_encode(reference, text).repeat(batch, 1, 1) for text in texts]


def _decode(reference, latents) -> np.ndarray:
    """8-bit pixels as SaveImage writes them."""
    with torch.no_grad():
        image = reference.vae.decode(latents / reference.vae.config.scaling_factor).sample
    pixels = (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    return np.round(pixels * 255).astype(np.uint8)


def _expected(reference, workflow, batch: int = 1) -> np.ndarray:
    """ComfyUI's image for the default workflow: its KSampler composed from its sources
    (tests/support/comfy_reference.py) on diffusers' UNet, decoded by diffusers' VAE."""
    from support.comfy_reference import ComfyModelSampling, comfy_ksampler

    sampler = workflow["3"]["inputs"]
    cond, uncond = _encode(reference, workflow, batch)
    s = ComfyModelSampling(dict(reference.scheduler.config))
    zeros = torch.zeros(batch, reference.unet.config.in_channels, 64 // 8, 64 // 8)
    latents = comfy_ksampler(
        reference.unet,
        s,
        cond,
        uncond,
        sampler["sampler_name"],
        sampler["scheduler"],
        sampler["steps"],
        sampler["cfg"],
        sampler["seed"],
        zeros,
        denoise=sampler["denoise"],
    )
    return _decode(reference, latents)


def assert_close_pixels(got: np.ndarray, expected: np.ndarray) -> None:
    """Within 2/255 max and 0.5/255 mean (8-bit rounding of float32 pixels within that)."""
    difference = np.abs(got.astype(np.int16) - expected.astype(np.int16))
    assert difference.max() <= 2 and difference.mean() <= 0.5, (difference.max(), difference.mean())
    assert expected.std() > 2, "a flat reference would make the comparison vacuous"


def test_a_comfyui_client_runs_the_default_workflow(server, reference):
    from comfy_api_simplified import ComfyApiWrapper

    api = ComfyApiWrapper(server)
    images = api.queue_and_wait_images(copy.deepcopy(TXT2IMG), "Save Image")
    assert len(images) == 1
    ((name, data),) = images.items()
    assert name.startswith("ComfyUI_") and name.endswith("_.png")
    got = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert_close_pixels(got, _expected(reference, TXT2IMG)[0])


def _post(server, workflow, **extra) -> httpx.Response:
    return httpx.post(server + "/prompt", json={"prompt": workflow, **extra}, timeout=WAIT_S)


def _wait(server, prompt_id) -> dict:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        history = httpx.get(f"{server}/history/{prompt_id}").json()
        if prompt_id in history:
            return history[prompt_id]
        time.sleep(0.05)
    raise AssertionError("the prompt did not finish")


def test_history_view_and_the_cache_across_prompts(server):
    first = _post(server, TXT2IMG, client_id="c1").json()
    assert first["node_errors"] == {}
    entry = _wait(server, first["prompt_id"])
    assert entry["status"]["completed"] and entry["status"]["status_str"] == "success"
    (saved,) = entry["outputs"]["9"]["images"]
    view = httpx.get(server + "/view", params=saved)
    assert view.status_code == 200 and view.content.startswith(b"\x89PNG")
    # A new seed: the sampler and what follows run again; the loader and the encodings are reused.
    changed = copy.deepcopy(TXT2IMG)
    changed["3"]["inputs"]["seed"] = 1
    second = _wait(server, _post(server, changed).json()["prompt_id"])
    (cached,) = [data for event, data in second["status"]["messages"] if event == "execution_cached"]
    assert set(cached["nodes"]) == {"4", "5", "6", "7"}
    (image,) = second["outputs"]["9"]["images"]
    assert image["filename"] != saved["filename"]


def _apply_controlnet(workflow: dict, name: str, negative=("12", 1)) -> None:
    """ControlNetLoader `name` + ControlNetApplyAdvanced on the sampler's conditionings (its
    negative output to the sampler unless `negative` says another)."""
    workflow["10"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": name}}
    workflow["12"] = {
        "class_type": "ControlNetApplyAdvanced",
        "inputs": {"positive": ["6", 0], "negative": ["7", 0], "control_net": ["10", 0], "image": ["11", 0]},
    }
    workflow["12"]["inputs"].update(strength=1.0, start_percent=0.0, end_percent=1.0)
    workflow["11"] = {"class_type": "LoadImage", "inputs": {"image": "hint.png"}}
    workflow["3"]["inputs"].update(positive=["12", 0], negative=list(negative))


@pytest.mark.parametrize(
    "change, kind, node",
    [
        (lambda w: w["3"]["inputs"].pop("steps"), "required_input_missing", "3"),
        (lambda w: w["3"]["inputs"].update(sampler_name="nope"), "value_not_in_list", "3"),
        (lambda w: w["3"]["inputs"].update(steps=0), "value_smaller_than_min", "3"),
        (lambda w: w["3"]["inputs"].update(cfg="seven"), "invalid_input_type", "3"),
        (lambda w: w["8"]["inputs"].update(samples=["4", 0]), "return_type_mismatch", "8"),
        (lambda w: w["8"]["inputs"].update(samples=["99", 0]), "bad_linked_input", "8"),
        (lambda w: w["4"]["inputs"].update(ckpt_name="missing.safetensors"), "value_not_in_list", "4"),
        (lambda w: _apply_controlnet(w, "missing.pth"), "value_not_in_list", "10"),
    ],
)
def test_a_bad_workflow_is_comfyuis_error_naming_the_node(server, change, kind, node):
    workflow = copy.deepcopy(TXT2IMG)
    change(workflow)
    answer = _post(server, workflow)
    assert answer.status_code == 400
    body = answer.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert [error["type"] for error in body["node_errors"][node]["errors"]] == [kind]
    assert body["node_errors"][node]["class_type"] == workflow[node]["class_type"]
    assert body["node_errors"][node]["dependent_outputs"] == ["9"]


def test_comfyuis_samplers_sdrt_does_not_run_are_refused_by_name(server):
    """dpm_adaptive and uni_pc are offered; ComfyUI's names sdrt lacks are refused saying why."""
    choices = httpx.get(f"{server}/object_info/KSampler").json()["KSampler"]["input"]["required"]["sampler_name"][0]
    assert {"dpm_adaptive", "uni_pc", "uni_pc_bh2"} <= set(choices) and "euler_cfg_pp" not in choices
    workflow = copy.deepcopy(TXT2IMG)
    workflow["3"]["inputs"]["sampler_name"] = "euler_cfg_pp"
    (error,) = _post(server, workflow).json()["node_errors"]["3"]["errors"]
    assert error["type"] == "value_not_in_list"
    assert "'euler_cfg_pp' is not run by sdrt: CFG++" in error["details"]


def test_an_unknown_node_and_no_output_are_refused(server):
    workflow = copy.deepcopy(TXT2IMG)
    workflow["10"] = {"class_type": "ConditioningConcat", "inputs": {}}
    body = _post(server, workflow).json()
    assert body["error"]["type"] == "invalid_prompt"
    assert "ConditioningConcat does not exist" in body["error"]["message"]
    assert "token-wise concatenation" in body["error"]["message"], "what it would need is said"
    no_output = {k: v for k, v in TXT2IMG.items() if k != "9"}
    assert _post(server, no_output).json()["error"]["type"] == "prompt_no_outputs"


def test_object_info_describes_the_nodes_from_the_registries(server):
    info = httpx.get(server + "/object_info").json()
    sampler = info["KSampler"]
    assert sampler["input_order"]["required"][:2] == ["model", "seed"]
    assert "euler" in sampler["input"]["required"]["sampler_name"][0]
    assert sampler["output"] == ["LATENT"] and info["SaveImage"]["output_node"] is True
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == ["standard"]
    assert httpx.get(server + "/object_info/KSampler").json() == {"KSampler": sampler}


def test_queue_upload_and_stats(server, tmp_path):
    picture = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(picture, format="PNG")
    upload = httpx.post(server + "/upload/image", files={"image": ("red.png", picture.getvalue(), "image/png")})
    assert upload.json() == {"name": "red.png", "subfolder": "", "type": "input"}
    escape = httpx.post(server + "/upload/image", files={"image": ("x.png", b"png")}, data={"subfolder": "../.."})
    assert escape.status_code == 400 and "outside" in escape.json()["error"]["message"]
    assert httpx.get(server + "/view", params={"filename": "../../etc/passwd", "type": "input"}).status_code == 400
    assert (
        "red.png" in httpx.get(server + "/object_info/LoadImage").json()["LoadImage"]["input"]["required"]["image"][0]
    )
    queue = httpx.get(server + "/queue").json()
    assert set(queue) == {"queue_running", "queue_pending"}
    stats = httpx.get(server + "/system_stats").json()
    assert stats["system"]["ram_total"] > 0 and stats["devices"][0]["name"] == "cpu"
    assert httpx.get(server + "/models/checkpoints").json() == ["standard"]


def test_img2img_through_load_image_and_vae_encode(server):
    picture = io.BytesIO()
    Image.new("RGB", (64, 64), (30, 120, 200)).save(picture, format="PNG")
    httpx.post(server + "/upload/image", files={"image": ("blue.png", picture.getvalue(), "image/png")})
    workflow = copy.deepcopy(TXT2IMG)
    workflow["10"] = {"class_type": "LoadImage", "inputs": {"image": "blue.png"}}
    workflow["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    workflow["3"]["inputs"].update(latent_image=["11", 0], denoise=0.5)
    entry = _wait(server, _post(server, workflow).json()["prompt_id"])
    assert entry["status"]["completed"], json.dumps(entry["status"])
    (saved,) = entry["outputs"]["9"]["images"]
    assert Image.open(io.BytesIO(httpx.get(server + "/view", params=saved).content)).size == (64, 64)


def test_a_controlnet_on_the_positive_only_is_refused_by_the_sampler(server):
    """sdrt's ControlNets guide both halves of guidance: a negative without the positive's
    ControlNetApplyAdvanced is an execution_error naming the sampler."""
    picture = io.BytesIO()
    Image.new("RGB", (64, 64), (9, 9, 9)).save(picture, format="PNG")
    httpx.post(server + "/upload/image", files={"image": ("hint.png", picture.getvalue(), "image/png")})
    workflow = copy.deepcopy(TXT2IMG)
    _apply_controlnet(workflow, "edges")
    workflow["3"]["inputs"]["negative"] = ["7", 0]
    entry = _wait(server, _post(server, workflow).json()["prompt_id"])
    (error,) = [data for event, data in entry["status"]["messages"] if event == "execution_error"]
    assert error["node_id"] == "3" and "different ControlNets" in error["exception_message"]


def test_the_servers_limits_hold_for_workflows(server):
    workflow = copy.deepcopy(TXT2IMG)
    workflow["3"]["inputs"]["steps"] = 151  # the server's --max-steps is 150
    entry = _wait(server, _post(server, workflow).json()["prompt_id"])
    assert entry["status"]["status_str"] == "error"
    (error,) = [data for event, data in entry["status"]["messages"] if event == "execution_error"]
    assert error["node_id"] == "3" and "--max-steps" in error["exception_message"]


def _advanced(model, latent, add_noise, start, end, leftover, sampler="euler_ancestral", scheduler="karras"):
    return {
        "class_type": "KSamplerAdvanced",
        "inputs": {
            "add_noise": add_noise,
            "noise_seed": 77,
            "steps": 6,
            "cfg": 7.5,
            "sampler_name": sampler,
            "scheduler": scheduler,
            "positive": ["6", 0],
            "negative": ["7", 0],
            "latent_image": latent,
            "model": model,
            "start_at_step": start,
            "end_at_step": end,
            "return_with_leftover_noise": leftover,
        },
        "_meta": {"title": "KSamplerAdvanced"},
    }


def test_ksampler_advanced_two_passes_equal_comfyui(server, reference):
    """Two KSamplerAdvanced passes (the base + refiner pattern): steps 0-3 with noise and the
    leftover noise returned, then 3-end without new noise; a batch of two from one seed."""
    from comfy_api_simplified import ComfyApiWrapper

    from support.comfy_reference import ComfyModelSampling, comfy_ksampler

    workflow = copy.deepcopy(TXT2IMG)
    workflow["5"]["inputs"]["batch_size"] = 2
    workflow["3"] = _advanced(["4", 0], ["5", 0], "enable", 0, 3, "enable")
    workflow["10"] = _advanced(["4", 0], ["3", 0], "disable", 3, 10000, "disable")
    workflow["8"]["inputs"]["samples"] = ["10", 0]
    images = ComfyApiWrapper(server).queue_and_wait_images(workflow, "Save Image")
    got = [np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for _, data in sorted(images.items())]

    cond, uncond = _encode(reference, workflow, 2)
    s = ComfyModelSampling(dict(reference.scheduler.config))
    zeros = torch.zeros(2, reference.unet.config.in_channels, 8, 8)
    arguments = (reference.unet, s, cond, uncond, "euler_ancestral", "karras", 6, 7.5, 77)
    first = comfy_ksampler(*arguments, zeros, start_step=0, last_step=3, force_full=False)
    final = comfy_ksampler(*arguments, first, start_step=3, last_step=10000, force_full=True, add_noise=False)
    expected = _decode(reference, final)
    assert len(got) == 2 and np.abs(expected[0].astype(int) - expected[1]).max() > 2, "two different images"
    for image, reference_image in zip(got, expected):
        assert_close_pixels(image, reference_image)


def test_clip_text_encode_weighs_as_comfyui(server, reference):
    """`(word:1.5)` in CLIPTextEncode: ComfyUI's rule (from the empty prompt's states, no mean
    restoration), through the client."""
    from comfy_api_simplified import ComfyApiWrapper

    workflow = copy.deepcopy(TXT2IMG)
    workflow["6"]["inputs"]["text"] = "a (red:6.0) fox in the ((snow)), (blurry:-4.0)"
    workflow["3"]["inputs"]["seed"] = 5
    ((_, data),) = ComfyApiWrapper(server).queue_and_wait_images(workflow, "Save Image").items()
    got = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    expected = _expected(reference, workflow)[0]
    assert_close_pixels(got, expected)
    plain = copy.deepcopy(workflow)
    plain["6"]["inputs"]["text"] = "a red fox in the snow, blurry"
    assert np.abs(_expected(reference, plain)[0].astype(int) - expected).max() > 2, "the weights change the image"


def _torch_upscale(samples: torch.Tensor, width: int, height: int, method: str, crop: str) -> torch.Tensor:
    """comfy.utils.common_upscale for torch's interpolate modes."""
    if crop == "center":
        old_width, old_height = samples.shape[-1], samples.shape[-2]
        old_aspect, new_aspect = old_width / old_height, width / height
        x = y = 0
        if old_aspect > new_aspect:
            x = round((old_width - old_width * (new_aspect / old_aspect)) / 2)
        elif old_aspect < new_aspect:
            y = round((old_height - old_height * (old_aspect / new_aspect)) / 2)
        samples = samples.narrow(-2, y, old_height - y * 2).narrow(-1, x, old_width - x * 2)
    return torch.nn.functional.interpolate(samples, size=(height, width), mode=method)


@pytest.mark.parametrize("method", ["nearest-exact", "bilinear", "area", "bicubic"])
@pytest.mark.parametrize("size, crop", [((13, 7), "disabled"), ((5, 11), "center"), ((16, 9), "center")])
def test_common_upscale_equals_comfyuis(method, size, crop):
    from sdrt.serve.comfy.image_nodes import common_upscale

    samples = torch.randn(2, 4, 9, 10, generator=torch.Generator().manual_seed(3))
    expected = _torch_upscale(samples, *size, method, crop).numpy()
    got = common_upscale(samples.numpy(), *size, method, crop)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)  # float32 sums in another order


def test_hires_two_pass_with_latent_upscale_by_equals_comfyui(server, reference):
    """KSampler, LatentUpscaleBy 1.5, KSampler at denoise 0.5 (ComfyUI's hires fix workflow)."""
    from comfy_api_simplified import ComfyApiWrapper

    from support.comfy_reference import ComfyModelSampling, comfy_ksampler

    workflow = copy.deepcopy(TXT2IMG)
    workflow["3"]["inputs"].update(sampler_name="dpmpp_2m", scheduler="karras")
    workflow["10"] = {
        "class_type": "LatentUpscaleBy",
        "inputs": {"samples": ["3", 0], "upscale_method": "nearest-exact", "scale_by": 1.5},
        "_meta": {"title": "Upscale Latent By"},
    }
    second = copy.deepcopy(workflow["3"])
    second["inputs"].update(latent_image=["10", 0], denoise=0.5, seed=11, sampler_name="euler_ancestral")
    workflow["11"] = second
    workflow["8"]["inputs"]["samples"] = ["11", 0]
    ((_, data),) = ComfyApiWrapper(server).queue_and_wait_images(workflow, "Save Image").items()
    got = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert got.shape == (96, 96, 3)

    cond, uncond = _encode(reference, workflow, 1)
    s = ComfyModelSampling(dict(reference.scheduler.config))
    zeros = torch.zeros(1, reference.unet.config.in_channels, 8, 8)
    first = comfy_ksampler(reference.unet, s, cond, uncond, "dpmpp_2m", "karras", 3, 7.5, 8566257, zeros)
    upscaled = _torch_upscale(first, 12, 12, "nearest-exact", "disabled")
    final = comfy_ksampler(
        reference.unet, s, cond, uncond, "euler_ancestral", "karras", 3, 7.5, 11, upscaled, denoise=0.5
    )
    assert_close_pixels(got, _decode(reference, final)[0])


def test_image_scale_nodes_through_the_client(server):
    from comfy_api_simplified import ComfyApiWrapper

    pixels = np.random.default_rng(4).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    picture = io.BytesIO()
    Image.fromarray(pixels).save(picture, format="PNG")
    httpx.post(server + "/upload/image", files={"image": ("noise.png", picture.getvalue(), "image/png")})
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "noise.png"}},
        "2": {
            "class_type": "ImageScale",
            "inputs": {"image": ["1", 0], "upscale_method": "bilinear", "width": 24, "height": 0, "crop": "center"},
        },
        "3": {"class_type": "ImageScaleBy", "inputs": {"image": ["2", 0], "upscale_method": "area", "scale_by": 0.5}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "scaled"}},
    }
    for key, value in workflow.items():
        value["_meta"] = {"title": f"n{key}"}
    ((_, data),) = ComfyApiWrapper(server).queue_and_wait_images(workflow, "n4").items()
    got = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    image = torch.from_numpy(pixels.astype(np.float32) / 255).permute(2, 0, 1)[None]
    scaled = _torch_upscale(image, 24, 16, "bilinear", "center")  # height: round(20 * 24 / 30)
    scaled = _torch_upscale(scaled, 12, 8, "area", "disabled")
    expected = np.round(scaled[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8)
    assert got.shape == expected.shape == (8, 12, 3)
    assert np.abs(got.astype(int) - expected).max() <= 1


def _upload_rgba(server, name: str) -> np.ndarray:
    """An RGBA picture with a transparent square (ComfyUI's mask: 1 where transparent)."""
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 40, 160, 90
    rgba[..., 3] = 255
    rgba[20:44, 16:40, 3] = 0
    picture = io.BytesIO()
    Image.fromarray(rgba).save(picture, format="PNG")
    httpx.post(server + "/upload/image", files={"image": (name, picture.getvalue(), "image/png")})
    return rgba


@torch.no_grad()
def _vae_latents(reference, pixels: torch.Tensor) -> torch.Tensor:
    """VAEEncode: the latent distribution's mean, scaled (sdrt's latent space)."""
    encoded = reference.vae.encode(pixels.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mode()
    return encoded * reference.vae.config.scaling_factor


@pytest.mark.parametrize("sampler", ["euler_ancestral", "ddim"])
def test_set_latent_noise_mask_equals_comfyui(server, reference, sampler):
    from comfy_api_simplified import ComfyApiWrapper

    from support.comfy_reference import ComfyModelSampling, comfy_ksampler

    rgba = _upload_rgba(server, "holed.png")
    workflow = copy.deepcopy(TXT2IMG)
    workflow["10"] = {"class_type": "LoadImage", "inputs": {"image": "holed.png"}}
    workflow["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    workflow["12"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["11", 0], "mask": ["10", 1]}}
    workflow["3"]["inputs"].update(latent_image=["12", 0], denoise=0.8, sampler_name=sampler)
    for key in ("10", "11", "12"):
        workflow[key]["_meta"] = {"title": key}
    ((_, data),) = ComfyApiWrapper(server).queue_and_wait_images(workflow, "Save Image").items()
    got = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    pixels = torch.from_numpy(rgba[..., :3].astype(np.float32) / 255)[None]
    mask = 1.0 - torch.from_numpy(rgba[..., 3].astype(np.float32) / 255)[None]
    cond, uncond = _encode(reference, workflow, 1)
    s = ComfyModelSampling(dict(reference.scheduler.config))
    arguments = (reference.unet, s, cond, uncond, sampler, "normal", 3, 7.5, 8566257, _vae_latents(reference, pixels))
    expected = _decode(reference, comfy_ksampler(*arguments, denoise=0.8, noise_mask=mask))[0]
    assert_close_pixels(got, expected)
    unmasked = _decode(reference, comfy_ksampler(*arguments, denoise=0.8))[0]
    assert np.abs(unmasked.astype(int) - expected).max() > 2, "the mask changes the image"


def _grow(mask: torch.Tensor, by: int) -> torch.Tensor:
    kernel = torch.ones((1, 1, by, by))
    return torch.clamp(torch.nn.functional.conv2d(mask.round(), kernel, padding=math.ceil((by - 1) / 2)), 0, 1)


def test_vae_encode_for_inpaint_with_load_image_mask_equals_comfyui(server, reference):
    from comfy_api_simplified import ComfyApiWrapper

    from support.comfy_reference import ComfyModelSampling, comfy_ksampler

    rgba = _upload_rgba(server, "holed2.png")
    workflow = copy.deepcopy(TXT2IMG)
    workflow["10"] = {"class_type": "LoadImage", "inputs": {"image": "holed2.png"}}
    workflow["13"] = {"class_type": "LoadImageMask", "inputs": {"image": "holed2.png", "channel": "alpha"}}
    workflow["11"] = {
        "class_type": "VAEEncodeForInpaint",
        "inputs": {"pixels": ["10", 0], "vae": ["4", 2], "mask": ["13", 0], "grow_mask_by": 6},
    }
    workflow["3"]["inputs"].update(latent_image=["11", 0], sampler_name="dpmpp_2m", scheduler="karras")
    for key in ("10", "11", "13"):
        workflow[key]["_meta"] = {"title": key}
    ((_, data),) = ComfyApiWrapper(server).queue_and_wait_images(workflow, "Save Image").items()
    got = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    pixels = torch.from_numpy(rgba[..., :3].astype(np.float32) / 255)[None]
    mask = (1.0 - torch.from_numpy(rgba[..., 3].astype(np.float32) / 255))[None, None]
    grey = (pixels - 0.5) * (1.0 - mask.round())[:, 0, :, :, None] + 0.5
    noise_mask = _grow(mask, 6)[:, :, :64, :64].round()
    cond, uncond = _encode(reference, workflow, 1)
    s = ComfyModelSampling(dict(reference.scheduler.config))
    latents = _vae_latents(reference, grey)
    arguments = (reference.unet, s, cond, uncond, "dpmpp_2m", "karras", 3, 7.5, 8566257, latents)
    expected = _decode(reference, comfy_ksampler(*arguments, noise_mask=noise_mask))[0]
    assert_close_pixels(got, expected)


def test_vae_loader_names_an_exports_vae(server):
    from comfy_api_simplified import ComfyApiWrapper

    workflow = copy.deepcopy(TXT2IMG)
    loader = {"class_type": "VAELoader", "inputs": {"vae_name": "standard.safetensors"}, "_meta": {"title": "v"}}
    workflow["10"] = loader
    workflow["8"]["inputs"]["vae"] = ["10", 0]
    api = ComfyApiWrapper(server)
    ((_, with_loader),) = api.queue_and_wait_images(workflow, "Save Image").items()
    ((_, plain),) = api.queue_and_wait_images(copy.deepcopy(TXT2IMG), "Save Image").items()
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(with_loader))), np.asarray(Image.open(io.BytesIO(plain))))
    info = httpx.get(server + "/object_info/VAELoader").json()["VAELoader"]
    assert info["input"]["required"]["vae_name"][0] == ["standard"]


def test_controlnet_apply_advanced_equals_comfyui(server, reference, controlnet):
    """ControlNetLoader + ControlNetApplyAdvanced (strength 0.7, start 0.2, end 0.6) with heun
    (two model calls a step): ComfyUI's rules written from comfy/controlnet.py and nodes.py; the
    hint of another aspect ratio, resized nearest-exact with a centre crop."""
    from comfy_api_simplified import ComfyApiWrapper
    from diffusers import ControlNetModel

    from support.comfy_reference import ComfyModelSampling, comfy_ksampler

    hint = np.random.default_rng(9).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    picture = io.BytesIO()
    Image.fromarray(hint).save(picture, format="PNG")
    httpx.post(server + "/upload/image", files={"image": ("hint.png", picture.getvalue(), "image/png")})
    strength, start, end = 0.7, 0.2, 0.6
    workflow = copy.deepcopy(TXT2IMG)
    workflow["10"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "edges.safetensors"}}
    workflow["11"] = {"class_type": "LoadImage", "inputs": {"image": "hint.png"}}
    workflow["12"] = {
        "class_type": "ControlNetApplyAdvanced",
        "inputs": {
            "positive": ["6", 0],
            "negative": ["7", 0],
            "control_net": ["10", 0],
            "image": ["11", 0],
            "strength": strength,
            "start_percent": start,
            "end_percent": end,
        },
    }
    workflow["3"]["inputs"].update(positive=["12", 0], negative=["12", 1], sampler_name="heun", steps=4)
    for key in ("10", "11", "12"):
        workflow[key]["_meta"] = {"title": key}
    ((_, data),) = ComfyApiWrapper(server).queue_and_wait_images(workflow, "Save Image").items()
    got = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    model = ControlNetModel.from_pretrained(controlnet)
    s = ComfyModelSampling(dict(reference.scheduler.config))

    def percent_to_sigma(percent):  # ModelSamplingDiscrete.percent_to_sigma
        return (
            999999999.9
            if percent <= 0
            else 0.0
            if percent >= 1
            else s.sigma(torch.tensor((1 - percent) * 999.0)).item()
        )

    highest, lowest = percent_to_sigma(start), percent_to_sigma(end)
    image = torch.from_numpy(hint.astype(np.float32) / 255).permute(2, 0, 1)[None]
    cond_hint = _torch_upscale(image, 64, 64, "nearest-exact", "center")
    guided = []

    def control(scaled, t, context, sigma):  # ControlNet.get_control, on both halves of the batch
        if sigma[0] > highest or sigma[0] < lowest:
            return {}
        guided.append(float(sigma[0]))
        down, mid = model(
            scaled,
            t,
            encoder_hidden_states=context,
            controlnet_cond=cond_hint.repeat(len(scaled), 1, 1, 1),
            return_dict=False,
        )
        down = [residual * strength for residual in down]
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid * strength}

    cond, uncond = _encode(reference, workflow, 1)
    zeros = torch.zeros(1, reference.unet.config.in_channels, 8, 8)
    arguments = (reference.unet, s, cond, uncond, "heun", "normal", 4, 7.5, 8566257, zeros)
    expected = _decode(reference, comfy_ksampler(*arguments, control=control))[0]
    assert 0 < len(guided) < 7, "the window keeps some of heun's seven calls, not all"
    assert_close_pixels(got, expected)
    plain = _decode(reference, comfy_ksampler(*arguments))[0]
    assert np.abs(plain.astype(int) - expected).max() > 2, "the ControlNet changes the image"


def _frames(server, client_id: str, workflow: dict, **extra) -> list[bytes]:
    """The binary frames the prompt's client gets on the websocket until the prompt ends."""
    from websockets.sync.client import connect

    frames = []
    with connect(server.replace("http://", "ws://") + f"/ws?clientId={client_id}") as socket:
        assert json.loads(socket.recv(timeout=WAIT_S))["type"] == "status"
        assert _post(server, workflow, client_id=client_id, **extra).status_code == 200
        while True:
            message = socket.recv(timeout=WAIT_S)
            if isinstance(message, bytes):
                frames.append(message)
            elif json.loads(message)["type"] in ("execution_success", "execution_error"):
                return frames


def test_preview_frames_on_the_websocket_when_a_prompt_asks(server):
    """ComfyUI's binary preview frames (server.py send_image: event 1 PREVIEW_IMAGE, type 1 JPEG,
    big-endian words) for a prompt whose extra_data asks (preview_method), none otherwise."""
    workflow = copy.deepcopy(TXT2IMG)
    workflow["3"]["inputs"].update(seed=21, steps=4)
    frames = _frames(server, "previews", workflow, extra_data={"preview_method": "auto"})
    assert len(frames) == 3, "after each step but the last (the image itself follows)"
    for frame in frames:
        assert frame[:8] == b"\x00\x00\x00\x01\x00\x00\x00\x01"
        with Image.open(io.BytesIO(frame[8:])) as preview:
            assert preview.format == "JPEG" and preview.size == (64, 64)
    workflow["3"]["inputs"]["seed"] = 22
    assert _frames(server, "quiet", workflow) == [], "the server previews nothing unless asked (--preview-every 0)"


@pytest.fixture(scope="module")
def sdxl_server(exported_sdxl, tmp_path_factory):
    """The tiny SDXL base served, the tiny refiner beside it in --models-dir."""
    from sdrt.serve.catalog import ModelCatalog

    base, refiner = exported_sdxl("base"), exported_sdxl("refiner")
    settings = ServeSettings(comfy_dir=str(tmp_path_factory.mktemp("comfy-sdxl")))
    catalog = ModelCatalog(base, refiner.parent, Pipeline.load)  # as `sdrt serve --models-dir` makes it
    with live_server(create_app(Pipeline.load(base), settings, catalog)) as url:
        yield url


def _sdxl_encode(pipe, prompt: str, negative: str, aesthetic: tuple[float, float] | None, size: int):
    """(cond, uncond, the UNet's added conditioning for [cond; uncond]) as ComfyUI's SDXL adm makes
    it: the latents' size, crop 0, 0; the refiner's aesthetic score 6 (positive) and 2.5 (negative)."""
    cond, uncond, pooled, negative_pooled = pipe.encode_prompt(
        prompt, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True, negative_prompt=negative
    )
    if aesthetic is None:
        ids = [[size, size, 0, 0, size, size]] * 2
    else:
        ids = [[size, size, 0, 0, aesthetic[0]], [size, size, 0, 0, aesthetic[1]]]
    added = {"text_embeds": torch.cat([pooled, negative_pooled]), "time_ids": torch.tensor(ids, dtype=torch.float32)}
    return cond, uncond, added


@pytest.mark.slow  # two SDXL exports and their diffusers references: about 14 s
def test_sdxl_base_and_refiner_equal_comfyui(sdxl_server, tiny_sdxl):
    """ComfyUI's SDXL base + refiner workflow: two checkpoints, each with its CLIPTextEncodes;
    KSamplerAdvanced on the base for steps 0-2 returning the leftover noise, then on the refiner
    from step 2 without new noise; decoded by the refiner's VAE."""
    from comfy_api_simplified import ComfyApiWrapper

    from conftest import sdxl_reference
    from support.comfy_reference import ComfyModelSampling, comfy_ksampler

    size, prompt, negative = 64, TXT2IMG["6"]["inputs"]["text"], TXT2IMG["7"]["inputs"]["text"]
    workflow = copy.deepcopy(TXT2IMG)
    workflow["4"]["inputs"]["ckpt_name"] = "base.safetensors"
    workflow["5"]["inputs"].update(width=size, height=size)
    workflow["12"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "refiner.safetensors"}}
    workflow["15"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["12", 1], "text": prompt}}
    workflow["16"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["12", 1], "text": negative}}
    workflow["3"] = _advanced(["4", 0], ["5", 0], "enable", 0, 2, "enable", "dpmpp_2m", "karras")
    workflow["11"] = _advanced(["12", 0], ["3", 0], "disable", 2, 10000, "disable", "dpmpp_2m", "karras")
    workflow["11"]["inputs"].update(positive=["15", 0], negative=["16", 0], steps=6)
    workflow["3"]["inputs"]["steps"] = 6
    workflow["8"]["inputs"].update(samples=["11", 0], vae=["12", 2])
    for key in ("12", "15", "16"):
        workflow[key]["_meta"] = {"title": key}
    ((_, data),) = ComfyApiWrapper(sdxl_server).queue_and_wait_images(workflow, "Save Image").items()
    got = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    base = sdxl_reference("StableDiffusionXLPipeline", tiny_sdxl["base"])
    refiner = sdxl_reference("StableDiffusionXLImg2ImgPipeline", tiny_sdxl["refiner"])
    assert base.vae.config.scaling_factor == refiner.vae.config.scaling_factor, "latents pass as they are"

    def sampled(pipe, aesthetic, latents, **cut):
        cond, uncond, added = _sdxl_encode(pipe, prompt, negative, aesthetic, size)

        def unet(x, t, encoder_hidden_states, **extra):
            return pipe.unet(x, t, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added, **extra)

        s = ComfyModelSampling(dict(pipe.scheduler.config))
        return comfy_ksampler(unet, s, cond, uncond, "dpmpp_2m", "karras", 6, 7.5, 77, latents, **cut)

    zeros = torch.zeros(1, base.unet.config.in_channels, size // 8, size // 8)
    first = sampled(base, None, zeros, start_step=0, last_step=2, force_full=False)
    final = sampled(refiner, (6.0, 2.5), first, start_step=2, last_step=10000, force_full=True, add_noise=False)
    assert_close_pixels(got, _decode(refiner, final)[0])
