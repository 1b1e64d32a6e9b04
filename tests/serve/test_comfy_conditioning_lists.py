"""ComfyUI's conditioning lists through the /prompt route (ConditioningCombine, ConditioningSetArea,
ConditioningSetAreaPercentage, ConditioningSetAreaStrength, ConditioningSetMask,
ConditioningSetTimestepRange) equal ComfyUI's rule, written from comfy/samplers.py independently
of sdrt (tests/support/comfy_cond_lists.py: process_conds and calc_cond_batch), on diffusers'
tiny UNet driven by k-diffusion's sampler as tests/support/comfy_reference.py composes ComfyUI's
KSampler."""

from __future__ import annotations

import copy
import io

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from tests.serve.test_comfy import TXT2IMG, _decode, _post, _wait, assert_close_pixels

#: The tiny export's largest size: 16 x 16 latents, room for areas of 8 latent rows (feathered
#: over min(8, 8 // 4) = 2 rows from each inner edge).
SIZE = 128


@pytest.fixture(scope="module")
def server(exported_tiny, tmp_path_factory):
    from sdrt.runtime.pipeline import Pipeline
    from sdrt.serve.app import create_app
    from sdrt.serve.schemas import ServeSettings
    from support.serving import live_server

    pipeline = Pipeline.load(exported_tiny("standard"))
    settings = ServeSettings(comfy_dir=str(tmp_path_factory.mktemp("comfy")))
    with live_server(create_app(pipeline, settings)) as base:
        yield base


@pytest.fixture(scope="module")
def reference(tiny_models):
    from conftest import diffusers_pipeline

    return diffusers_pipeline("StableDiffusionPipeline", tiny_models["standard"])


def _expected(reference, positive, negative, sampler, steps, cfg, seed, batch=1, cut=None, **options) -> np.ndarray:
    from support.comfy_cond_lists import calc_side, resolve_conds, same_area
    from support.comfy_reference import ComfyModelSampling, comfy_ksampler

    s = ComfyModelSampling(dict(reference.scheduler.config))
    rows = columns = SIZE // 8
    positive, negative = resolve_conds(positive, s, rows, columns), resolve_conds(negative, s, rows, columns)
    for c in list(positive):  # process_conds: for k in conds, for c in conds[k], the other side
        same_area(negative, c)
    for c in list(negative):
        same_area(positive, c)

    def guided(x, sigma):
        cond = calc_side(reference.unet, s, positive, x, sigma, **options)
        uncond = calc_side(reference.unet, s, negative, x, sigma, **options)
        return uncond + (cond - uncond) * cfg

    zeros = torch.zeros(batch, reference.unet.config.in_channels, rows, columns)
    arguments = (reference.unet, s, None, None, sampler, "normal", steps, cfg, seed, zeros)
    latents = comfy_ksampler(*arguments, guided=guided, **(cut or {}))
    images = _decode(reference, latents)
    return images[0] if batch == 1 else images


def _context(reference, text: str) -> torch.Tensor:
    from support.comfy_reference import comfy_encode

    return comfy_encode(reference, text)


# ---- the workflows ----
def _workflow(positive: list, extra: dict, sampler: str = "euler", steps: int = 3, checkpoint: str = "") -> dict:
    workflow = copy.deepcopy(TXT2IMG)
    if checkpoint:
        workflow["4"]["inputs"]["ckpt_name"] = checkpoint
    workflow["5"]["inputs"].update(height=SIZE, width=SIZE)
    workflow["3"]["inputs"].update(positive=positive, sampler_name=sampler, steps=steps)
    for key, value in extra.items():
        workflow[key] = {**value, "_meta": {"title": key}}
    return workflow


def _text(text: str) -> dict:
    return {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": text}}


def _run(server, workflow) -> np.ndarray:
    from comfy_api_simplified import ComfyApiWrapper

    images = ComfyApiWrapper(server).queue_and_wait_images(workflow, "Save Image")
    pixels = [np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for _, data in sorted(images.items())]
    return pixels[0] if len(pixels) == 1 else np.stack(pixels)


FOX, BIRD, NEGATIVE = "a red fox in the snow", "a blue bird on a branch", "text, watermark"
SEED, CFG = 8566257, 7.5


def test_combine_and_an_area_with_its_strength_equal_comfyui(server, reference):
    """ConditioningCombine of the whole image's prompt and ConditioningSetArea's (64 x 64 px at
    (32, 24): latent rows 3..11, columns 4..12, feathered over 2 rows and columns) with
    strength 0.8; the negative gets a copy of the area with its own text. A batch of two: each
    image's rows of every call (ComfyUI's noise for the batch from one generator)."""
    area = {"width": 64, "height": 64, "x": 32, "y": 24, "strength": 0.8}
    extra = {
        "20": _text(BIRD),
        "21": {"class_type": "ConditioningSetArea", "inputs": {"conditioning": ["20", 0], **area}},
        "22": {
            "class_type": "ConditioningCombine",
            "inputs": {"conditioning_1": ["6", 0], "conditioning_2": ["21", 0]},
        },
    }
    workflow = _workflow(["22", 0], extra)
    workflow["5"]["inputs"]["batch_size"] = 2
    got = _run(server, workflow)
    fox, bird, negative = (_context(reference, text) for text in (FOX, BIRD, NEGATIVE))
    positive = [{"context": fox}, {"context": bird, "area": (8, 8, 3, 4), "strength": 0.8}]
    arguments = ([{"context": negative}], "euler", 3, CFG, SEED, 2)
    expected = _expected(reference, positive, *arguments)
    assert got.shape == expected.shape == (2, SIZE, SIZE, 3)
    assert_close_pixels(got, expected)
    unfeathered = _expected(reference, positive, *arguments, feather=False)
    assert np.abs(unfeathered.astype(int) - expected).max() > 2, "the feather changes the image"
    moved = [positive[0], {**positive[1], "area": (8, 8, 4, 4)}]
    shifted = _expected(reference, moved, *arguments)
    assert np.abs(shifted.astype(int) - expected).max() > 2, "the area's offset changes the image"


def test_percentage_areas_and_a_timestep_range_equal_comfyui(server, reference):
    """ConditioningSetAreaPercentage (rounded to latent units on the 16 x 16 latents: 6 x 8 at
    (5, 8), touching
    the right border: no feather there), ConditioningSetAreaStrength over a combined list, and
    ConditioningSetTimestepRange keeping the fox for the first 40% of the noise levels (heun:
    two UNet calls a step, the window decided per call)."""
    extra = {
        "20": _text(BIRD),
        "21": {
            "class_type": "ConditioningSetAreaPercentage",
            "inputs": {"conditioning": ["20", 0], "width": 0.5, "height": 0.4, "x": 0.5, "y": 0.3, "strength": 1.0},
        },
        "23": {
            "class_type": "ConditioningSetTimestepRange",
            "inputs": {"conditioning": ["6", 0], "start": 0.0, "end": 0.4},
        },
        "24": _text("a snowy forest"),
        "25": {
            "class_type": "ConditioningCombine",
            "inputs": {"conditioning_1": ["23", 0], "conditioning_2": ["24", 0]},
        },
        "26": {
            "class_type": "ConditioningCombine",
            "inputs": {"conditioning_1": ["25", 0], "conditioning_2": ["21", 0]},
        },
        "27": {"class_type": "ConditioningSetAreaStrength", "inputs": {"conditioning": ["26", 0], "strength": 1.5}},
    }
    got = _run(server, _workflow(["27", 0], extra, sampler="heun", steps=3))
    fox, bird, forest, negative = (_context(reference, t) for t in (FOX, BIRD, "a snowy forest", NEGATIVE))
    positive = [
        {"context": fox, "start_percent": 0.0, "end_percent": 0.4, "strength": 1.5},
        {"context": forest, "strength": 1.5},
        {"context": bird, "area": ("percentage", 0.4, 0.5, 0.3, 0.5), "strength": 1.5},
    ]
    expected = _expected(reference, positive, [{"context": negative}], "heun", 3, CFG, SEED)
    assert_close_pixels(got, expected)
    always = [{**positive[0], "end_percent": 1.0}, *positive[1:]]
    assert (
        np.abs(_expected(reference, always, [{"context": negative}], "heun", 3, CFG, SEED).astype(int) - expected).max()
        > 2
    ), "the timestep range changes the image"


def test_a_timestep_range_under_ksampler_advanceds_cut_equals_comfyui(server, reference):
    """KSamplerAdvanced from step 2 of 5 (the schedule's tail): the bird's range 0.7..1.0 is
    decided on the cut schedule's own sigmas, call by call."""
    extra = {
        "20": _text(BIRD),
        "23": {
            "class_type": "ConditioningSetTimestepRange",
            "inputs": {"conditioning": ["20", 0], "start": 0.7, "end": 1.0},
        },
        "25": {
            "class_type": "ConditioningCombine",
            "inputs": {"conditioning_1": ["6", 0], "conditioning_2": ["23", 0]},
        },
    }
    workflow = _workflow(["25", 0], extra)
    sampler = workflow["3"]["inputs"]
    workflow["3"] = {
        "class_type": "KSamplerAdvanced",
        "inputs": {
            **{key: sampler[key] for key in ("cfg", "latent_image", "model", "negative", "positive", "scheduler")},
            "add_noise": "enable",
            "noise_seed": SEED,
            "steps": 5,
            "sampler_name": "euler",
            "start_at_step": 2,
            "end_at_step": 10000,
            "return_with_leftover_noise": "disable",
        },
        "_meta": {"title": "KSamplerAdvanced"},
    }
    got = _run(server, workflow)
    fox, bird, negative = (_context(reference, t) for t in (FOX, BIRD, NEGATIVE))
    positive = [{"context": fox}, {"context": bird, "start_percent": 0.7, "end_percent": 1.0}]
    cut = dict(start_step=2, last_step=10000, force_full=True)
    expected = _expected(reference, positive, [{"context": negative}], "euler", 5, CFG, SEED, cut=cut)
    assert_close_pixels(got, expected)
    without = _expected(reference, positive[:1], [{"context": negative}], "euler", 5, CFG, SEED, cut=cut)
    assert np.abs(without.astype(int) - expected).max() > 2, "the bird takes part in some calls"
    always = [positive[0], {"context": bird}]
    everywhere = _expected(reference, always, [{"context": negative}], "euler", 5, CFG, SEED, cut=cut)
    assert np.abs(everywhere.astype(int) - expected).max() > 2, "and not in all of them"


@pytest.mark.parametrize("set_cond_area", ["default", "mask bounds"])
def test_a_mask_equals_comfyui(server, reference, set_cond_area):
    """ConditioningSetMask (LoadImageMask's red channel, soft inside rows and columns 32..96 px;
    strength 0.9): the mask bilinear at the 16 x 16 latents weighs the bird, without feather;
    with "mask bounds" its bounding box (latents 4..12) is the bird's area, and the negative
    gets a copy of that area with the mask and its own text."""
    red = np.zeros((SIZE, SIZE), np.uint8)
    rows, columns = np.mgrid[32:96, 32:96]
    red[32:96, 32:96] = 60 + (rows * 7 + columns * 3) % 190
    picture = io.BytesIO()
    Image.fromarray(np.stack([red, red // 2, red // 3], axis=-1)).save(picture, format="PNG")
    files = {"image": ("mask.png", picture.getvalue(), "image/png")}
    assert httpx.post(server + "/upload/image", files=files).status_code == 200
    extra = {
        "20": _text(BIRD),
        "28": {"class_type": "LoadImageMask", "inputs": {"image": "mask.png", "channel": "red"}},
        "29": {
            "class_type": "ConditioningSetMask",
            "inputs": {"conditioning": ["20", 0], "mask": ["28", 0], "strength": 0.9, "set_cond_area": set_cond_area},
        },
        "22": {
            "class_type": "ConditioningCombine",
            "inputs": {"conditioning_1": ["6", 0], "conditioning_2": ["29", 0]},
        },
    }
    got = _run(server, _workflow(["22", 0], extra))
    fox, bird, negative = (_context(reference, text) for text in (FOX, BIRD, NEGATIVE))
    mask = torch.from_numpy(red.astype(np.float32) / 255)[None]
    bounds = set_cond_area == "mask bounds"
    masked = {"context": bird, "mask": mask, "mask_strength": 0.9, "set_area_to_bounds": bounds}
    expected = _expected(reference, [{"context": fox}, masked], [{"context": negative}], "euler", 3, CFG, SEED)
    assert_close_pixels(got, expected)
    unmasked = _expected(
        reference, [{"context": fox}, {"context": bird}], [{"context": negative}], "euler", 3, CFG, SEED
    )
    assert np.abs(unmasked.astype(int) - expected).max() > 2, "the mask changes the image"


@pytest.fixture(scope="module")
def sdxl_server(exported_sdxl, tmp_path_factory):
    from sdrt.runtime.pipeline import Pipeline
    from sdrt.serve.app import create_app
    from sdrt.serve.schemas import ServeSettings
    from support.serving import live_server

    settings = ServeSettings(comfy_dir=str(tmp_path_factory.mktemp("comfy-sdxl")))
    with live_server(create_app(Pipeline.load(exported_sdxl("base")), settings)) as base:
        yield base


def test_an_sdxl_area_alone_on_the_positive_equals_comfyui(sdxl_server, tiny_sdxl):
    """SDXL (each call with its text's pooled output and the image's size ids): the positive is
    only an area (64 x 64 px at (48, 32)), so outside it ComfyUI's positive denoised prediction
    is 0 (its weight sum is 1e-37); the negative gets a copy of the area with its text."""
    from conftest import sdxl_reference

    extra = {
        "21": {
            "class_type": "ConditioningSetArea",
            "inputs": {"conditioning": ["6", 0], "width": 64, "height": 64, "x": 48, "y": 32, "strength": 1.0},
        },
    }
    got = _run(sdxl_server, _workflow(["21", 0], extra, sampler="dpmpp_2m", checkpoint="base.safetensors"))
    pipe = sdxl_reference("StableDiffusionXLPipeline", tiny_sdxl["base"])
    ids = torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]], dtype=torch.float32)

    def cond(text: str, **values) -> dict:
        context, _, pooled, _ = pipe.encode_prompt(text, device="cpu", do_classifier_free_guidance=False)
        return {"context": context, "added": {"text_embeds": pooled, "time_ids": ids}, **values}

    positive = [cond(FOX, area=(8, 8, 4, 6))]
    expected = _expected(pipe, positive, [cond(NEGATIVE)], "dpmpp_2m", 3, CFG, SEED)
    assert_close_pixels(got, expected)


@pytest.mark.parametrize(
    ("area", "says"),
    [
        ({"width": 72, "height": 64, "x": 0, "y": 0}, "the area 9x8 at (0, 0) (latent units) does not fit"),
        ({"width": 64, "height": 64, "x": 128, "y": 0}, "lies outside the 16x16 latents"),
    ],
)
def test_an_area_sdrt_cannot_run_is_the_samplers_error_naming_it(server, area, says):
    """An area of an odd latent size (the tiny export's UNet takes steps of 2; ComfyUI's takes
    any) or beyond the latents: an execution_error of the sampler, saying what is wrong."""
    extra = {"21": {"class_type": "ConditioningSetArea", "inputs": {"conditioning": ["6", 0], **area, "strength": 1.0}}}
    entry = _wait(server, _post(server, _workflow(["21", 0], extra)).json()["prompt_id"])
    (error,) = [data for event, data in entry["status"]["messages"] if event == "execution_error"]
    assert error["node_id"] == "3" and says in error["exception_message"], error["exception_message"]


def test_conditioning_lists_on_a_flow_model_are_refused_by_name():
    """FLUX.1 / SD3 have no UNet areas: the sampler refuses, naming the nodes and the family."""
    from types import SimpleNamespace

    from sdrt.serve.comfy.conditioning_nodes import conditioning_entries, conditioning_set_area
    from sdrt.serve.comfy.sd_nodes import NodeError
    from sdrt.serve.comfy.values import Conditioning, ModelHandle

    flux = SimpleNamespace(manifest=SimpleNamespace(family="flux"), family=SimpleNamespace(sampler_space="flow"))
    plain = Conditioning(FOX, ModelHandle(flux, "flux"))
    (area,) = conditioning_set_area(None, plain, 64, 64, 0, 0, 1.0)
    assert conditioning_entries(plain, plain, None, flux) is None, "one plain conditioning a side runs as ever"
    with pytest.raises(NodeError, match="ConditioningSetArea.*run on SD 1.x and SDXL; this is flux"):
        conditioning_entries(area, plain, None, flux)
