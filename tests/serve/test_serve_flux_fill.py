"""A1111's /sdapi/v1/img2img with a mask on a FLUX.1 Fill export: Fill's own inpainting (the mask
and the masked image as channels), the mask as given, the answer byte-equal to Pipeline.generate
with the same settings (which equals diffusers' FluxFillPipeline: tests/runtime/test_flux_modes.py).
A1111's mask handling (blur, fill, masked area) is not FLUX's: the fields every A1111 client sends
are reported unused, an inverted mask is a 400 naming its field."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from PIL import Image

from sdrt.runtime.pipeline import Pipeline
from sdrt.serve.app import create_app
from sdrt.serve.schemas import ServeSettings
from support.serving import decode_png, live_server, png_b64

PROMPT = "a red fox in a snowy forest at dawn"
HEIGHT, WIDTH, STEPS, SEED, STRENGTH = 64, 48, 2, 7, 0.75
#: FluxFillPipeline's default guidance scale (what the route uses without distilled_cfg_scale).
FILL_GUIDANCE = 30.0


@pytest.fixture(scope="module")
def served(exported_flux_fill):
    pipeline = Pipeline.load(exported_flux_fill["export"])
    with live_server(create_app(pipeline, ServeSettings(randn_source="CPU"))) as url:
        yield url, pipeline


def test_a1111_img2img_with_a_mask_on_fill_equals_the_pipeline(served):
    url, pipeline = served
    image = Image.fromarray((np.random.default_rng(1).random((HEIGHT, WIDTH, 3)) * 255).astype(np.uint8))
    hole = np.zeros((HEIGHT, WIDTH), np.uint8)
    hole[16:48, 8:40] = 255
    mask = Image.fromarray(hole)
    payload = {
        "prompt": PROMPT, "steps": STEPS, "seed": SEED, "width": WIDTH, "height": HEIGHT, "cfg_scale": 7,
        "init_images": [png_b64(image)], "mask": png_b64(mask), "denoising_strength": STRENGTH,
        "mask_blur": 4, "inpainting_fill": 1, "inpaint_full_res": False,  # what A1111 clients send
    }  # fmt: skip
    response = httpx.post(f"{url}/sdapi/v1/img2img", json=payload, timeout=120)
    assert response.status_code == 200, response.text
    expected = pipeline.generate(
        PROMPT, init_image=image, mask_image=mask, strength=STRENGTH, steps=STEPS, seed=SEED,
        guidance_scale=FILL_GUIDANCE, height=HEIGHT, width=WIDTH,
    )  # fmt: skip
    got = np.asarray(decode_png(response.json()["images"][0]))
    np.testing.assert_array_equal(got, np.asarray(expected.images[0]))
    assert "A1111's mask handling does not apply" in json.dumps(response.json())
    inverted = httpx.post(f"{url}/sdapi/v1/img2img", json={**payload, "inpainting_mask_invert": 1}, timeout=120)
    assert inverted.status_code == 400 and "inpainting_mask_invert" in inverted.text, inverted.text
