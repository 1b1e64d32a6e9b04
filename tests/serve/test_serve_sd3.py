"""Stable Diffusion 3 through both servers: sdrt's `skip_layer_guidance`, `t5` and
`max_sequence_length` fields on the A1111 routes and the OpenAI images API, each image equal
to the pipeline's own for the same settings (the pipeline equals diffusers'
StableDiffusion3Pipeline: tests/runtime/test_sd3.py); A1111's cfg_scale is SD3's real CFG, the
OpenAI route's default guidance SD3's 7.0; bad values answered 400 naming the field."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from sdrt.runtime.families.sd3 import StableDiffusion3
from sdrt.runtime.features.skip_layers import SkipLayerGuidance
from sdrt.runtime.features.step_caches import parse_cache
from sdrt.runtime.pipeline import Pipeline
from sdrt.serve.app import ServeSettings, create_app
from support.serving import decode_png, live_server

PROMPT = "a red fox in a snowy forest at dawn"
HEIGHT, WIDTH, STEPS, SEED = 64, 48, 3, 4
SKIP = {"layers": [0, 2], "scale": 3.0, "stop": 0.9}


@pytest.fixture(scope="module")
def served(exported_sd3):
    pipeline = Pipeline.load(exported_sd3("t5"))
    with live_server(create_app(pipeline, ServeSettings(randn_source="CPU"))) as url:
        yield url, pipeline


def _expected(pipeline: Pipeline, **settings) -> np.ndarray:
    settings = {"steps": STEPS, "seed": SEED, "height": HEIGHT, "width": WIDTH, **settings}
    return np.asarray(pipeline.generate(PROMPT, **settings).images[0])


def _image(url: str, route: str, payload: dict) -> np.ndarray:
    response = httpx.post(f"{url}{route}", json=payload, timeout=120)
    assert response.status_code == 200, response.text
    body = response.json()
    return np.asarray(decode_png(body["images"][0] if "images" in body else body["data"][0]["b64_json"]))


def test_a1111_txt2img_takes_skip_layer_guidance_t5_and_real_cfg(served):
    """cfg_scale with a negative prompt is SD3's classifier-free guidance (not FLUX's true CFG)."""
    url, pipeline = served
    payload = {
        "prompt": PROMPT, "negative_prompt": "blurry", "cfg_scale": 5, "steps": STEPS, "seed": SEED,
        "width": WIDTH, "height": HEIGHT, "skip_layer_guidance": SKIP, "max_sequence_length": 8,
    }  # fmt: skip
    got = _image(url, "/sdapi/v1/txt2img", payload)
    settings = {"negative_prompt": "blurry", "guidance_scale": 5.0, "max_sequence_length": 8}
    expected = _expected(pipeline, skip_layer_guidance=SkipLayerGuidance((0, 2), 3.0, stop=0.9), **settings)
    np.testing.assert_array_equal(got, expected)
    assert not np.array_equal(expected, _expected(pipeline, **settings))  # the field matters


def test_openai_generations_take_t5_and_default_to_sd3s_guidance(served):
    url, pipeline = served
    payload = {
        "prompt": PROMPT, "size": f"{WIDTH}x{HEIGHT}", "steps": STEPS, "seed": SEED,
        "response_format": "b64_json", "t5": False, "skip_layer_guidance": SKIP,
    }  # fmt: skip
    got = _image(url, "/v1/images/generations", payload)
    skip = SkipLayerGuidance((0, 2), 3.0, stop=0.9)
    expected = _expected(pipeline, guidance_scale=StableDiffusion3.default_guidance, t5=False, skip_layer_guidance=skip)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    ("route", "payload", "param"),
    [
        ("/sdapi/v1/txt2img", {"skip_layer_guidance": {"layers": [9]}}, "skip_layer_guidance"),
        ("/sdapi/v1/txt2img", {"skip_layer_guidance": {"layers": []}}, "skip_layer_guidance.layers"),
        ("/sdapi/v1/txt2img", {"skip_layer_guidance": {"layers": [1], "stop": 2}}, "skip_layer_guidance.stop"),
        ("/sdapi/v1/txt2img", {"t5": "sometimes"}, "t5"),
        ("/sdapi/v1/txt2img", {"max_sequence_length": 999}, "max_sequence_length"),
        ("/v1/images/generations", {"max_sequence_length": 0}, "max_sequence_length"),
        ("/v1/images/generations", {"skip_layer_guidance": {"layers": [1], "scale": "x"}}, "skip_layer_guidance.scale"),
        ("/v1/images/generations", {"cache": "taylorseer", "skip_layer_guidance": {"layers": [1]}}, "cache"),
    ],
)
def test_bad_sd3_fields_are_400_naming_the_field(served, route, payload, param):
    url, _ = served
    size = {"size": f"{WIDTH}x{HEIGHT}"} if route.startswith("/v1") else {"width": WIDTH, "height": HEIGHT}
    response = httpx.post(f"{url}{route}", json={"prompt": PROMPT, "steps": 1, **size, **payload}, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and "\n" not in error["message"], response.text


def test_the_taylorseer_cache_field_on_both_servers(served):
    """sdrt's `cache` extension on SD3: the pipeline's own image with that cache, on either API."""
    url, pipeline = served
    cache = "taylorseer:cache_interval=2,disable_cache_before_step=1"  # step 1 of 3 is predicted
    base = {"prompt": PROMPT, "steps": STEPS, "seed": SEED, "cache": cache}
    a1111 = _expected(pipeline, guidance_scale=5.0, cache=parse_cache(cache))
    assert not np.array_equal(a1111, _expected(pipeline, guidance_scale=5.0))  # the field matters
    got = _image(url, "/sdapi/v1/txt2img", {**base, "cfg_scale": 5, "width": WIDTH, "height": HEIGHT})
    np.testing.assert_array_equal(got, a1111)
    openai = _expected(pipeline, guidance_scale=StableDiffusion3.default_guidance, cache=parse_cache(cache))
    got = _image(url, "/v1/images/generations", {**base, "size": f"{WIDTH}x{HEIGHT}", "response_format": "b64_json"})
    np.testing.assert_array_equal(got, openai)


def test_sd3_fields_on_another_family_are_refused_by_name(exported_tiny):
    with live_server(create_app(Pipeline.load(exported_tiny()))) as url:
        response = httpx.post(f"{url}/sdapi/v1/txt2img", json={"prompt": PROMPT, "steps": 1, "t5": False}, timeout=60)
    assert response.status_code == 400 and response.json()["error"]["param"] == "t5", response.text
    assert "Stable Diffusion 3 models only" in response.json()["error"]["message"]
