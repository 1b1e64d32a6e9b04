"""ComfyUI's FLUX.1 and SD3 workflows on `sdrt serve` (its separate loaders mapped onto sdrt's
exports, FluxGuidance, EmptySD3LatentImage, ModelSamplingFlux / SD3, KSampler on flow models),
against ComfyUI's KSampler composed from its sources (tests/support/comfy_flow_reference.py)
over diffusers' transformers."""

from __future__ import annotations

import copy
import time

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from sdrt.runtime.pipeline import Pipeline
from sdrt.runtime.schedulers.kdiffusion.comfy_flow_sigmas import (
    DISCRETE_FLOW,
    FLUX_SAMPLING,
    ComfyFlowSigmas,
    FlowModelSampling,
)
from sdrt.runtime.schedulers.kdiffusion.comfy_schedules import COMFY_SCHEDULER_NAMES, comfy_sigmas
from sdrt.serve.app import create_app
from sdrt.serve.schemas import ServeSettings
from support.comfy_flow_reference import (
    DiscreteFlow,
    FluxSampling,
    comfy_flow_ksampler,
    decode,
    flux_node_shift,
    flux_velocity,
    sd3_velocity,
)
from support.comfy_reference import comfy_scheduler
from support.serving import live_server

SIZE = 64
WAIT_S = 120
PROMPT, NEGATIVE = "a red fox in the snow", "blurry, watermark"


def _titled(workflow: dict) -> dict:
    for entry in workflow.values():
        entry.setdefault("_meta", {"title": entry["class_type"]})
    return workflow


#: ComfyUI's FLUX.1 dev workflow (its examples' "flux_dev_example" in API format): the diffusion
#: model, the two text encoders and the VAE as separate files.
FLUX = _titled(
    {
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["11", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["13", 0], "vae": ["10", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
        "10": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
        "11": {
            "class_type": "DualCLIPLoader",
            "inputs": {"clip_name1": "t5xxl_fp16.safetensors", "clip_name2": "clip_l.safetensors", "type": "flux"},
        },
        "12": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors", "weight_dtype": "default"}},
        "13": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["30", 0],
                "seed": 42,
                "steps": 3,
                "cfg": 1.0,
                "sampler_name": "euler",
                "scheduler": "simple",
                "positive": ["26", 0],
                "negative": ["33", 0],
                "latent_image": ["27", 0],
                "denoise": 1.0,
            },
        },
        "26": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["6", 0], "guidance": 4.0}},
        "27": {"class_type": "EmptySD3LatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "30": {
            "class_type": "ModelSamplingFlux",
            "inputs": {"model": ["12", 0], "max_shift": 1.15, "base_shift": 0.5, "width": SIZE, "height": SIZE},
        },
        "33": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["11", 0]}},
    }
)
#: ComfyUI's SD3.5 workflow: the checkpoint, its three text encoders as files, ModelSamplingSD3.
SD3 = _titled(
    {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd3.5_medium.safetensors"}},
        "11": {
            "class_type": "TripleCLIPLoader",
            "inputs": {
                "clip_name1": "clip_l.safetensors",
                "clip_name2": "clip_g.safetensors",
                "clip_name3": "t5xxl_fp16.safetensors",
            },
        },
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["11", 0]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["11", 0]}},
        "13": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["4", 0], "shift": 2.0}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["13", 0],
                "seed": 7,
                "steps": 3,
                "cfg": 4.5,
                "sampler_name": "dpmpp_2m",
                "scheduler": "sgm_uniform",
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
                "denoise": 1.0,
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
    }
)


def _served(folder, name: str, tmp_path_factory):
    """A server whose model is `folder` under ComfyUI's file name `name`."""
    root = tmp_path_factory.mktemp(name)
    (root / name).symlink_to(folder, target_is_directory=True)
    pipeline = Pipeline.load(root / name)
    settings = ServeSettings(comfy_dir=str(root / "comfy"))
    return live_server(create_app(pipeline, settings))


@pytest.fixture(scope="module")
def flux_server(exported_flux, tmp_path_factory):
    with _served(exported_flux("dev"), "flux1-dev", tmp_path_factory) as base:
        yield base


@pytest.fixture(scope="module")
def sd3_server(exported_sd3, tmp_path_factory):
    with _served(exported_sd3("t5"), "sd3.5_medium", tmp_path_factory) as base:
        yield base


def _run(server, workflow) -> dict:
    answer = httpx.post(server + "/prompt", json={"prompt": workflow}, timeout=WAIT_S)
    assert answer.status_code == 200, answer.text
    prompt_id = answer.json()["prompt_id"]
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        history = httpx.get(f"{server}/history/{prompt_id}").json()
        if prompt_id in history:
            return history[prompt_id]
        time.sleep(0.05)
    raise AssertionError("the prompt did not finish")


def _image(server, workflow) -> np.ndarray:
    entry = _run(server, workflow)
    assert entry["status"]["completed"], entry["status"]["messages"]
    (saved,) = entry["outputs"]["9"]["images"]
    view = httpx.get(server + "/view", params=saved)
    return np.asarray(Image.open(__import__("io").BytesIO(view.content)).convert("RGB"))


def _error(server, workflow) -> dict:
    entry = _run(server, workflow)
    assert not entry["status"]["completed"]
    (error,) = [data for event, data in entry["status"]["messages"] if event == "execution_error"]
    return error


def assert_close_pixels(got: np.ndarray, expected: np.ndarray) -> None:
    """Within 2/255 max and 0.5/255 mean (8-bit rounding of float32 pixels within that)."""
    difference = np.abs(got.astype(np.int16) - expected.astype(np.int16))
    assert difference.max() <= 2 and difference.mean() <= 0.5, (difference.max(), difference.mean())
    assert expected.std() > 2, "a flat reference would make the comparison vacuous"


def _latent_in(pipe, batch: int) -> torch.Tensor:
    """EmptySD3LatentImage's zeros through process_latent_in: (0 - shift) * scale."""
    config = pipe.vae.config
    shape = (batch, pipe.transformer.config.in_channels // (4 if hasattr(pipe, "_pack_latents") else 1))
    value = (0.0 - config.shift_factor) * config.scaling_factor
    return torch.full((*shape, SIZE // 8, SIZE // 8), value)


def _flux_expected(tiny_flux, exported_flux, workflow) -> np.ndarray:
    import diffusers

    pipe = diffusers.FluxPipeline.from_pretrained(tiny_flux["dev"])
    length = Pipeline.load(exported_flux("dev")).manifest.flux.max_sequence_length
    embeds, pooled, text_ids = pipe.encode_prompt(PROMPT, prompt_2=None, max_sequence_length=length)
    inputs = workflow["13"]["inputs"]
    patch = workflow["30"]["inputs"]
    s = FluxSampling(flux_node_shift(patch["max_shift"], patch["base_shift"], patch["width"], patch["height"]))
    velocity = flux_velocity(pipe, embeds, pooled, text_ids, workflow["26"]["inputs"]["guidance"], SIZE, SIZE)
    latents = comfy_flow_ksampler(
        velocity,
        s,
        inputs["sampler_name"],
        inputs["scheduler"],
        inputs["steps"],
        inputs["cfg"],
        inputs["seed"],
        _latent_in(pipe, 1),
    )
    return decode(pipe, latents)[0]


def test_comfyuis_flux_dev_workflow_equals_comfyuis_ksampler(flux_server, tiny_flux, exported_flux):
    assert_close_pixels(_image(flux_server, copy.deepcopy(FLUX)), _flux_expected(tiny_flux, exported_flux, FLUX))


@pytest.mark.slow  # the suite's CPU budget: SD3's diffusers pipeline loads in ~5 s
def test_comfyuis_sd3_workflow_with_t5_equals_comfyuis_ksampler(sd3_server, tiny_sd3, exported_sd3):
    from conftest import sd3_reference

    pipe = sd3_reference("StableDiffusion3Pipeline", tiny_sd3)
    length = Pipeline.load(exported_sd3("t5")).manifest.sd3.max_sequence_length
    embeds, negative_embeds, pooled, negative_pooled = pipe.encode_prompt(
        PROMPT,
        PROMPT,
        PROMPT,
        negative_prompt=NEGATIVE,
        negative_prompt_2=NEGATIVE,
        negative_prompt_3=NEGATIVE,
        max_sequence_length=length,
    )
    inputs = SD3["3"]["inputs"]
    s = DiscreteFlow(SD3["13"]["inputs"]["shift"])
    velocity = sd3_velocity(pipe, embeds, negative_embeds, pooled, negative_pooled)
    latents = comfy_flow_ksampler(
        velocity,
        s,
        inputs["sampler_name"],
        inputs["scheduler"],
        inputs["steps"],
        inputs["cfg"],
        inputs["seed"],
        _latent_in(pipe, 1),
    )
    assert_close_pixels(_image(sd3_server, copy.deepcopy(SD3)), decode(pipe, latents)[0])


@pytest.mark.parametrize(
    "sampling, reference",
    [
        (FlowModelSampling(DISCRETE_FLOW, 3.0), lambda: DiscreteFlow(3.0)),
        (FlowModelSampling(FLUX_SAMPLING, 1.15), lambda: FluxSampling(1.15)),
        (
            FlowModelSampling(FLUX_SAMPLING, flux_node_shift(1.15, 0.5, 512, 768)),
            lambda: FluxSampling(flux_node_shift(1.15, 0.5, 512, 768)),
        ),
    ],
)
def test_every_scheduler_on_the_flow_model_samplings_equals_comfyuis(sampling, reference):
    s = reference()
    ours = ComfyFlowSigmas(sampling)
    np.testing.assert_allclose(ours.sigmas, s.sigmas.numpy(), rtol=1e-6)
    for name in COMFY_SCHEDULER_NAMES:
        for steps in (1, 4, 9):
            if (name, steps) == ("kl_optimal", 1):
                continue  # NaN in ComfyUI (0 / 0); sdrt's one step is asserted in test_comfy_samplers.py
            expected = comfy_scheduler(s, name, steps).numpy()
            np.testing.assert_allclose(
                comfy_sigmas(name, steps, ours, False), expected, rtol=1e-6, atol=1e-7, err_msg=f"{name} {steps}"
            )


def _changed(workflow: dict, node: str, **inputs) -> dict:
    changed = copy.deepcopy(workflow)
    changed[node]["inputs"].update(inputs)
    return changed


@pytest.mark.parametrize(
    "node, inputs, failing, message",
    [
        (
            "11",
            {"clip_name1": "clip_l.safetensors", "clip_name2": "clip_g.safetensors", "type": "sd3"},
            "13",
            "sd3 text encoders",
        ),
        (
            "11",
            {"clip_name1": "clip_l.safetensors", "clip_name2": "clip_l.safetensors"},
            "11",
            "not the text encoders of one flux export",
        ),
        ("13", {"sampler_name": "euler_ancestral"}, "13", "rectified-flow variant"),
        ("13", {"cfg": 0.5}, "13", "cfg: below 1"),
    ],
)
def test_loader_combinations_of_no_one_export_are_comfyuis_error_naming_the_node(
    flux_server, node, inputs, failing, message
):
    error = _error(flux_server, _changed(FLUX, node, **inputs))
    assert error["node_id"] == failing and error["node_type"] == FLUX[failing]["class_type"]
    assert message in error["exception_message"]


def test_model_sampling_sd3_on_flux_and_unknown_encoder_files_are_refused(flux_server):
    workflow = copy.deepcopy(FLUX)
    workflow["30"] = {"class_type": "ModelSamplingSD3", "inputs": {"model": ["12", 0], "shift": 3.0}}
    error = _error(flux_server, workflow)
    assert error["node_type"] == "ModelSamplingSD3" and "patches a sd3 model" in error["exception_message"]
    answer = httpx.post(
        flux_server + "/prompt", json={"prompt": _changed(FLUX, "11", clip_name1="umt5_xxl.safetensors")}
    )
    assert answer.status_code == 400
    assert [e["type"] for e in answer.json()["node_errors"]["11"]["errors"]] == ["value_not_in_list"]


def test_object_info_lists_the_flux_files_of_the_served_export(flux_server):
    info = httpx.get(flux_server + "/object_info").json()
    assert info["UNETLoader"]["input"]["required"]["unet_name"][0] == ["flux1-dev"]
    assert info["DualCLIPLoader"]["input"]["required"]["clip_name1"][0] == [
        "clip_l.safetensors",
        "t5xxl_fp16.safetensors",
    ]
    assert "ae.safetensors" in info["VAELoader"]["input"]["required"]["vae_name"][0]
    for name in (
        "TripleCLIPLoader",
        "CLIPLoader",
        "FluxGuidance",
        "EmptySD3LatentImage",
        "ModelSamplingFlux",
        "ModelSamplingSD3",
    ):
        assert info[name]["name"] == name


def _flux_reference(tiny_flux, exported_flux, negative: str | None = None):
    import diffusers

    pipe = diffusers.FluxPipeline.from_pretrained(tiny_flux["dev"])
    length = Pipeline.load(exported_flux("dev")).manifest.flux.max_sequence_length
    encoded = [pipe.encode_prompt(text, prompt_2=None, max_sequence_length=length) for text in (PROMPT, negative or "")]
    return pipe, encoded


def _two_conditionings(pipe, encoded, guidance: float):
    """FLUX's velocity for the positive and (negative=True) the negative encoding."""
    positive, negative = (flux_velocity(pipe, *e, guidance, SIZE, SIZE) for e in encoded)
    return lambda x, sigma, is_negative: (negative if is_negative else positive)(x, sigma, False)


@pytest.mark.slow
def test_flux_true_cfg_with_the_models_own_sampling_equals_comfyuis(flux_server, tiny_flux, exported_flux):
    """No ModelSamplingFlux (dev's own shift 1.15), no FluxGuidance (ComfyUI's 3.5), cfg 2.5."""
    workflow = _changed(FLUX, "13", model=["12", 0], positive=["6", 0], cfg=2.5, sampler_name="dpmpp_2m")
    workflow = _changed(workflow, "13", scheduler="beta", steps=4)
    workflow["33"]["inputs"]["text"] = NEGATIVE
    pipe, encoded = _flux_reference(tiny_flux, exported_flux, NEGATIVE)
    velocity = _two_conditionings(pipe, encoded, 3.5)
    latents = comfy_flow_ksampler(velocity, FluxSampling(1.15), "dpmpp_2m", "beta", 4, 2.5, 42, _latent_in(pipe, 1))
    assert_close_pixels(_image(flux_server, workflow), decode(pipe, latents)[0])


@pytest.mark.slow
def test_flux_ksampler_advanced_two_passes_with_leftover_noise_equal_comfyuis(flux_server, tiny_flux, exported_flux):
    """The first pass ends above 0 (CONST's inverse_noise_scaling divides), the second adds no noise."""
    workflow = copy.deepcopy(FLUX)
    common = {"model": ["30", 0], "positive": ["26", 0], "negative": ["33", 0], "cfg": 1.0, "steps": 4}
    common.update(sampler_name="heun", scheduler="normal", noise_seed=5, end_at_step=10000)
    first = {**common, "latent_image": ["27", 0], "add_noise": "enable", "start_at_step": 0, "end_at_step": 2}
    workflow["13"] = {"class_type": "KSamplerAdvanced", "inputs": {**first, "return_with_leftover_noise": "enable"}}
    second = {**common, "latent_image": ["13", 0], "add_noise": "disable", "start_at_step": 2}
    workflow["14"] = {"class_type": "KSamplerAdvanced", "inputs": {**second, "return_with_leftover_noise": "disable"}}
    workflow["8"]["inputs"]["samples"] = ["14", 0]
    pipe, encoded = _flux_reference(tiny_flux, exported_flux)
    velocity = _two_conditionings(pipe, encoded, 4.0)
    s = FluxSampling(flux_node_shift(1.15, 0.5, SIZE, SIZE))
    half = comfy_flow_ksampler(velocity, s, "heun", "normal", 4, 1.0, 5, _latent_in(pipe, 1), last_step=2)
    latents = comfy_flow_ksampler(velocity, s, "heun", "normal", 4, 1.0, 5, half, start_step=2, add_noise=False)
    assert_close_pixels(_image(flux_server, _titled(workflow)), decode(pipe, latents)[0])


@pytest.mark.slow
def test_sd3_without_t5_at_part_denoise_equals_comfyuis(sd3_server, tiny_sd3, exported_sd3):
    """DualCLIPLoader's sd3 (no T5: diffusers' zeros, as sdrt's export), an empty latent at
    denoise 0.7: noise_scaling mixes in ComfyUI's zeros, unshifted (count_nonzero is 0)."""
    from conftest import sd3_reference

    workflow = copy.deepcopy(SD3)
    workflow["11"] = {
        "class_type": "DualCLIPLoader",
        "inputs": {"clip_name1": "clip_l.safetensors", "clip_name2": "clip_g.safetensors", "type": "sd3"},
    }
    workflow = _changed(workflow, "3", sampler_name="lms", scheduler="ddim_uniform", denoise=0.7, steps=4)
    pipe = sd3_reference("StableDiffusion3Pipeline", tiny_sd3, t5=False)
    length = Pipeline.load(exported_sd3("t5")).manifest.sd3.max_sequence_length
    embeds, negative_embeds, pooled, negative_pooled = pipe.encode_prompt(
        PROMPT,
        PROMPT,
        PROMPT,
        negative_prompt=NEGATIVE,
        negative_prompt_2=NEGATIVE,
        negative_prompt_3=NEGATIVE,
        max_sequence_length=length,
    )
    velocity = sd3_velocity(pipe, embeds, negative_embeds, pooled, negative_pooled)
    s = DiscreteFlow(2.0)
    empty = torch.zeros_like(_latent_in(pipe, 1))  # inner_sample: an all-zero latent is not shifted
    latents = comfy_flow_ksampler(velocity, s, "lms", "ddim_uniform", 4, 4.5, 7, empty, denoise=0.7)
    assert_close_pixels(_image(sd3_server, _titled(workflow)), decode(pipe, latents)[0])


@pytest.mark.slow  # the suite's CPU budget: four sdrt and reference runs, ~7 s
def test_flux_batch_of_two_and_a_noise_mask_equal_comfyuis(flux_server, tiny_flux, exported_flux):
    """EmptySD3LatentImage's batch of 2 (prepare_noise: the whole batch from one CPU generator)
    and a LoadImage mask through SetLatentNoiseMask on a VAEEncode'd image at denoise 0.8
    (KSamplerX0Inpaint: the kept region CONST-noised to each level, the prediction there the
    latent image)."""
    from serve.test_comfy import _upload_rgba

    batch = _changed(FLUX, "27", batch_size=2)
    entry = _run(flux_server, batch)
    assert entry["status"]["completed"], entry["status"]["messages"]
    got = []
    for saved in entry["outputs"]["9"]["images"]:
        view = httpx.get(flux_server + "/view", params=saved)
        got.append(np.asarray(Image.open(__import__("io").BytesIO(view.content)).convert("RGB")))
    pipe, encoded = _flux_reference(tiny_flux, exported_flux)
    (embeds, pooled, ids), (negative, negative_pooled, _) = encoded
    two = (
        (torch.cat([embeds] * 2), torch.cat([pooled] * 2), ids),
        (torch.cat([negative] * 2), torch.cat([negative_pooled] * 2), ids),
    )
    velocity = _two_conditionings(pipe, two, 4.0)
    s = FluxSampling(flux_node_shift(1.15, 0.5, SIZE, SIZE))
    latents = comfy_flow_ksampler(velocity, s, "euler", "simple", 3, 1.0, 42, _latent_in(pipe, 2))
    expected = decode(pipe, latents)
    assert len(got) == 2
    for image, reference in zip(got, expected, strict=True):
        assert_close_pixels(image, reference)
    assert np.abs(expected[0].astype(int) - expected[1]).max() > 2, "the batch's noises differ"

    rgba = _upload_rgba(flux_server, "holed.png")
    masked = copy.deepcopy(FLUX)
    masked["40"] = {"class_type": "LoadImage", "inputs": {"image": "holed.png"}}
    masked["41"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["40", 0], "vae": ["10", 0]}}
    masked["42"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["41", 0], "mask": ["40", 1]}}
    masked = _changed(masked, "13", latent_image=["42", 0], denoise=0.8, sampler_name="dpmpp_2m")
    pixels = torch.from_numpy(rgba[..., :3].astype(np.float32) / 255).permute(2, 0, 1)[None]
    mask = 1.0 - torch.from_numpy(rgba[..., 3].astype(np.float32) / 255)[None]
    config = pipe.vae.config
    with torch.no_grad():
        z = pipe.vae.encode(pixels * 2 - 1).latent_dist.mode()
    image = (z - config.shift_factor) * config.scaling_factor  # process_latent_in
    velocity = _two_conditionings(pipe, encoded, 4.0)
    arguments = (velocity, s, "dpmpp_2m", "simple", 3, 1.0, 42, image)
    expected = decode(pipe, comfy_flow_ksampler(*arguments, denoise=0.8, noise_mask=mask))[0]
    assert_close_pixels(_image(flux_server, _titled(masked)), expected)
    unmasked = decode(pipe, comfy_flow_ksampler(*arguments, denoise=0.8))[0]
    assert np.abs(unmasked.astype(int) - expected).max() > 2, "the mask changes the image"
