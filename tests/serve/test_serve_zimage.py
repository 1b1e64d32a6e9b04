"""Z-Image through both servers: A1111's cfg_scale is its guidance scale (real CFG, with the
negative prompt; 0 for Turbo), the OpenAI route's default is the family's (ZImagePipeline's
5.0); each image equal to the pipeline's own (which equals diffusers: tests/runtime/test_zimage.py)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from sdrt.runtime.pipeline import Pipeline
from sdrt.serve.app import ServeSettings, create_app
from support.serving import decode_png, live_server

PROMPT = "a red fox in a snowy forest at dawn"
HEIGHT, WIDTH, STEPS, SEED = 64, 48, 2, 3


@pytest.fixture(scope="module")
def served(exported_zimage):
    pipeline = Pipeline.load(exported_zimage)
    with live_server(create_app(pipeline, ServeSettings(randn_source="CPU"))) as url:
        yield url, pipeline


def _expected(pipeline: Pipeline, **settings) -> np.ndarray:
    settings = {"steps": STEPS, "seed": SEED, "height": HEIGHT, "width": WIDTH, **settings}
    return np.asarray(pipeline.generate(PROMPT, **settings).images[0])


def test_a1111_cfg_scale_is_the_guidance_scale(served):
    url, pipeline = served
    payload = {"prompt": PROMPT, "negative_prompt": "blurry", "cfg_scale": 0, "steps": STEPS, "seed": SEED}
    response = httpx.post(f"{url}/sdapi/v1/txt2img", json={**payload, "width": WIDTH, "height": HEIGHT}, timeout=120)
    assert response.status_code == 200, response.text
    turbo = _expected(pipeline, guidance_scale=0.0)
    np.testing.assert_array_equal(np.asarray(decode_png(response.json()["images"][0])), turbo)
    payload["cfg_scale"] = 3.0
    response = httpx.post(f"{url}/sdapi/v1/txt2img", json={**payload, "width": WIDTH, "height": HEIGHT}, timeout=120)
    assert response.status_code == 200, response.text
    guided = _expected(pipeline, guidance_scale=3.0, negative_prompt="blurry")
    np.testing.assert_array_equal(np.asarray(decode_png(response.json()["images"][0])), guided)
    assert not np.array_equal(turbo, guided)


def test_openai_generations_use_the_family_default(served):
    url, pipeline = served
    payload = {"prompt": PROMPT, "size": f"{WIDTH}x{HEIGHT}", "steps": STEPS, "seed": SEED}
    payload["response_format"] = "b64_json"
    response = httpx.post(f"{url}/v1/images/generations", json=payload, timeout=120)
    assert response.status_code == 200, response.text
    expected = _expected(pipeline, guidance_scale=pipeline.family.default_guidance)
    np.testing.assert_array_equal(np.asarray(decode_png(response.json()["data"][0]["b64_json"])), expected)
    response = httpx.post(f"{url}/v1/images/generations", json={**payload, "size": f"{WIDTH}x56"}, timeout=120)
    assert response.status_code == 400 and "56" in response.text
