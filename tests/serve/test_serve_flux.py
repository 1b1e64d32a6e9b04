"""FLUX.1 dev through both servers: the A1111 routes (Forge's `distilled_cfg_scale`, default 3.5)
and the OpenAI images API, each image equal to the pipeline's own for the same settings (the
pipeline equals diffusers' FluxPipeline: tests/runtime/test_flux.py); bad input answered 400
naming the field."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from PIL import Image

from sdrt.runtime.families.flux import Flux
from sdrt.runtime.pipeline import Pipeline
from sdrt.serve.app import ServeSettings, create_app
from support.serving import decode_png, live_server, png_b64

PROMPT = "a red fox in a snowy forest at dawn"
HEIGHT, WIDTH, STEPS, SEED = 64, 48, 2, 3
FORGE_DISTILLED = 3.5  # Forge's default distilled_cfg_scale


@pytest.fixture(scope="module")
def served(exported_flux):
    pipeline = Pipeline.load(exported_flux("dev"))
    with live_server(create_app(pipeline, ServeSettings(randn_source="CPU"))) as url:
        yield url, pipeline


def _expected(pipeline: Pipeline, **settings) -> np.ndarray:
    settings = {"steps": STEPS, "seed": SEED, "height": HEIGHT, "width": WIDTH, **settings}
    return np.asarray(pipeline.generate(PROMPT, **settings).images[0])


def _post(url: str, route: str, payload: dict) -> dict:
    response = httpx.post(f"{url}{route}", json=payload, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def test_family_default_is_forges_distilled_guidance():
    assert Flux.default_guidance == FORGE_DISTILLED


def test_a1111_txt2img_uses_distilled_guidance(served):
    url, pipeline = served
    base = {"prompt": PROMPT, "steps": STEPS, "seed": SEED, "width": WIDTH, "height": HEIGHT}
    # A1111 clients send cfg_scale 7 always: on FLUX without a negative prompt it is not real CFG.
    body = _post(url, "/sdapi/v1/txt2img", {**base, "cfg_scale": 7})
    expected = _expected(pipeline, guidance_scale=FORGE_DISTILLED)
    np.testing.assert_array_equal(np.asarray(decode_png(body["images"][0])), expected)
    body = _post(url, "/sdapi/v1/txt2img", {**base, "distilled_cfg_scale": 2.0})
    np.testing.assert_array_equal(np.asarray(decode_png(body["images"][0])), _expected(pipeline, guidance_scale=2.0))
    assert not np.array_equal(expected, _expected(pipeline, guidance_scale=2.0))  # the field matters


def test_a1111_true_cfg_with_a_negative_prompt(served):
    url, pipeline = served
    payload = {"prompt": PROMPT, "negative_prompt": "blurry", "cfg_scale": 4.0, "steps": STEPS, "seed": SEED}
    body = _post(url, "/sdapi/v1/txt2img", {**payload, "width": WIDTH, "height": HEIGHT})
    expected = _expected(pipeline, guidance_scale=FORGE_DISTILLED, negative_prompt="blurry", true_cfg_scale=4.0)
    np.testing.assert_array_equal(np.asarray(decode_png(body["images"][0])), expected)


def test_a1111_img2img(served):
    url, pipeline = served
    source = Image.fromarray((np.random.default_rng(0).random((HEIGHT, WIDTH, 3)) * 255).astype(np.uint8))
    payload = {"prompt": PROMPT, "steps": STEPS + 2, "seed": SEED, "denoising_strength": 0.6}
    body = _post(url, "/sdapi/v1/img2img", {**payload, "init_images": [png_b64(source)]})
    expected = pipeline.generate(
        PROMPT, steps=STEPS + 2, seed=SEED, init_image=source, strength=0.6, guidance_scale=FORGE_DISTILLED
    )
    np.testing.assert_array_equal(np.asarray(decode_png(body["images"][0])), np.asarray(expected.images[0]))


def test_openai_generations_use_the_family_default(served):
    url, pipeline = served
    payload = {
        "prompt": PROMPT,
        "size": f"{WIDTH}x{HEIGHT}",
        "steps": STEPS,
        "seed": SEED,
        "response_format": "b64_json",
    }
    body = _post(url, "/v1/images/generations", payload)
    expected = _expected(pipeline, guidance_scale=FORGE_DISTILLED)
    np.testing.assert_array_equal(np.asarray(decode_png(body["data"][0]["b64_json"])), expected)


@pytest.mark.parametrize(
    ("route", "payload", "param"),
    [
        ("/sdapi/v1/txt2img", {"width": 56, "height": HEIGHT}, "width"),
        ("/sdapi/v1/txt2img", {"width": WIDTH, "height": 72}, "height"),
        ("/sdapi/v1/txt2img", {"width": WIDTH, "height": HEIGHT, "distilled_cfg_scale": -1}, "distilled_cfg_scale"),
        ("/sdapi/v1/txt2img", {"width": WIDTH, "height": HEIGHT, "sampler_name": "Euler a"}, "sampler_name"),
        ("/v1/images/generations", {"size": "56x64"}, "width"),  # the size's width
    ],
)
def test_bad_flux_requests_name_the_field(served, route, payload, param):
    url, _ = served
    response = httpx.post(f"{url}{route}", json={"prompt": PROMPT, "steps": 1, **payload}, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param, response.text


def test_the_cache_field_on_both_servers(served):
    """sdrt's `cache` extension: the pipeline's own image with that cache, on either API."""
    from sdrt.runtime.features.step_caches import parse_cache

    url, pipeline = served
    cache, steps = "taylorseer:cache_interval=2,disable_cache_before_step=1", 3  # step 1 is predicted
    expected = _expected(pipeline, guidance_scale=FORGE_DISTILLED, steps=steps, cache=parse_cache(cache))
    assert not np.array_equal(expected, _expected(pipeline, guidance_scale=FORGE_DISTILLED, steps=steps))
    base = {"prompt": PROMPT, "steps": steps, "seed": SEED, "cache": cache}
    body = _post(url, "/sdapi/v1/txt2img", {**base, "width": WIDTH, "height": HEIGHT})
    np.testing.assert_array_equal(np.asarray(decode_png(body["images"][0])), expected)
    body = _post(url, "/v1/images/generations", {**base, "size": f"{WIDTH}x{HEIGHT}", "response_format": "b64_json"})
    np.testing.assert_array_equal(np.asarray(decode_png(body["data"][0]["b64_json"])), expected)


@pytest.mark.parametrize(
    ("route", "cache", "message"),
    [
        ("/sdapi/v1/txt2img", "taylorseer:max_order=-1", "max_order"),
        ("/v1/images/generations", "first-block:0.1", "--cache-graphs"),  # this export has no parts
    ],
)
def test_bad_cache_fields_are_400_naming_it(served, route, cache, message):
    url, _ = served
    size = {"size": f"{WIDTH}x{HEIGHT}"} if route.startswith("/v1") else {"width": WIDTH, "height": HEIGHT}
    response = httpx.post(f"{url}{route}", json={"prompt": PROMPT, "steps": 1, "cache": cache, **size}, timeout=60)
    assert response.status_code == 400 and message in response.text, response.text
    assert response.json()["error"]["param"] == "cache", response.text
