"""OpenAI's /v1/images/edits on a FLUX.1 Kontext export runs Kontext's edit: the image is the
reference (no mask, no strength), the answer equal to Pipeline.generate's for the same settings
(which equals diffusers' FluxKontextPipeline: tests/runtime/test_flux_modes.py)."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image

from sdrt.runtime.pipeline import Pipeline
from sdrt.serve.app import ServeSettings, create_app
from support.serving import decode_png, live_server

PROMPT = "make the fox wear a red scarf"
HEIGHT, WIDTH, STEPS, SEED = 64, 48, 2, 3
KONTEXT_GUIDANCE = 3.5  # the family's default, what the route uses without guidance_scale
#: sdrt's Kontext size fields (both servers): the reference at its own size, the output at the
#: requested one (its area), so the tiny runs stay small (the automatic sizes: tests/runtime/test_flux_modes.py).
AS_GIVEN = {"kontext_auto_resize": False, "kontext_max_area": HEIGHT * WIDTH}


@pytest.fixture(scope="module")
def served(exported_flux_kontext):
    pipeline = Pipeline.load(exported_flux_kontext)
    with live_server(create_app(pipeline, ServeSettings(randn_source="CPU"))) as url:
        yield url, pipeline


def _expected(pipeline: Pipeline, reference: Image.Image) -> np.ndarray:
    """The pipeline's own Kontext edit with the settings both routes send."""
    settings = {"steps": STEPS, "seed": SEED, "guidance_scale": KONTEXT_GUIDANCE, "height": HEIGHT, "width": WIDTH}
    settings.update(AS_GIVEN)
    return np.asarray(pipeline.generate(PROMPT, init_image=reference, **settings).images[0])


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_openai_edits_on_kontext_equal_the_pipelines_edit(served):
    url, pipeline = served
    pixels = np.random.default_rng(5).random((32, 48, 4))
    pixels[..., 3] = 0.5  # a translucent reference: on Kontext its alpha marks nothing to repaint
    reference = Image.fromarray((pixels * 255).astype(np.uint8), "RGBA")
    data = {"prompt": PROMPT, "size": f"{WIDTH}x{HEIGHT}", "steps": str(STEPS), "seed": str(SEED)}
    data.update({name: str(value).lower() for name, value in AS_GIVEN.items()})  # form fields
    response = httpx.post(
        f"{url}/v1/images/edits",
        data={**data, "response_format": "b64_json"},
        files={"image": ("ref.png", _png(reference))},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    got = np.asarray(decode_png(response.json()["data"][0]["b64_json"]))
    np.testing.assert_array_equal(got, _expected(pipeline, reference))
    masked = httpx.post(
        f"{url}/v1/images/edits",
        data=data,
        files={"image": ("ref.png", _png(reference)), "mask": ("mask.png", _png(reference))},
        timeout=120,
    )
    assert masked.status_code == 400 and "mask" in masked.text


def test_a1111_img2img_on_kontext_edits_the_init_image(served):
    """A1111 clients send denoising_strength on every img2img: on Kontext it does not apply."""
    from support.serving import png_b64

    url, pipeline = served
    reference = Image.fromarray((np.random.default_rng(6).random((HEIGHT, WIDTH, 3)) * 255).astype(np.uint8))
    payload = {"prompt": PROMPT, "steps": STEPS, "seed": SEED, "width": WIDTH, "height": HEIGHT, "cfg_scale": 7}
    payload.update(AS_GIVEN)
    response = httpx.post(
        f"{url}/sdapi/v1/img2img",
        json={**payload, "init_images": [png_b64(reference)], "denoising_strength": 0.75},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    np.testing.assert_array_equal(np.asarray(decode_png(response.json()["images"][0])), _expected(pipeline, reference))
