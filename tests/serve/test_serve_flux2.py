"""FLUX.2 [klein] through the OpenAI route: /v1/images/edits without a mask edits from the image
as a reference (Flux2KleinPipeline has no image-to-image), equal to the pipeline's own run with
reference_images (which equals diffusers: tests/runtime/test_flux2.py); with a mask it is
refused naming the field, as inpainting does not run on FLUX.2."""

from __future__ import annotations

import io

import httpx
import numpy as np
from PIL import Image

from sdrt.runtime.pipeline import Pipeline
from sdrt.serve.app import create_app
from sdrt.serve.schemas import ServeSettings
from support.serving import decode_png, live_server

PROMPT = "a red fox in a snowy forest at dawn"
HEIGHT, WIDTH, STEPS, SEED = 64, 48, 2, 3


def _png(image: Image.Image) -> bytes:
    stream = io.BytesIO()
    image.save(stream, format="PNG")
    return stream.getvalue()


def test_openai_edits_read_the_image_as_a_reference(exported_flux2_klein):
    pipeline = Pipeline.load(exported_flux2_klein)
    pixels = np.random.default_rng(0).integers(0, 256, (80, 64, 3), dtype=np.uint8)
    reference = Image.fromarray(pixels)
    fields = {"prompt": PROMPT, "size": f"{WIDTH}x{HEIGHT}", "steps": STEPS, "seed": SEED}
    fields.update(response_format="b64_json", guidance_scale=3.0)
    with live_server(create_app(pipeline)) as url:
        files = {"image": ("reference.png", _png(reference))}
        response = httpx.post(f"{url}/v1/images/edits", data=fields, files=files, timeout=120)
        assert response.status_code == 200, response.text
        got = np.asarray(decode_png(response.json()["data"][0]["b64_json"]))
        mask = {**files, "mask": ("mask.png", _png(Image.new("RGBA", reference.size)))}
        refused = httpx.post(f"{url}/v1/images/edits", data=fields, files=mask, timeout=120)
    expected = pipeline.generate(
        PROMPT, steps=STEPS, seed=SEED, height=HEIGHT, width=WIDTH, guidance_scale=3.0, reference_images=[reference]
    )
    np.testing.assert_array_equal(got, np.asarray(expected.images[0]))
    assert refused.status_code == 400 and "inpainting" in refused.text, refused.text


def test_a1111_img2img_reads_every_init_image_as_a_reference(exported_flux2_klein):
    """A1111's img2img on klein: init_images, in order, are its reference images (no start image:
    klein has no image-to-image; A1111 clients send a denoising_strength always, which does not
    apply); cfg_scale is klein's real CFG. A mask is refused naming the field."""
    from support.serving import png_b64

    pipeline = Pipeline.load(exported_flux2_klein)
    rng = np.random.default_rng(1)
    references = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((80, 64), (64, 96))]
    payload = {"prompt": PROMPT, "steps": STEPS, "seed": SEED, "width": WIDTH, "height": HEIGHT, "cfg_scale": 3}
    payload.update(init_images=[png_b64(image) for image in references], denoising_strength=0.75)
    with live_server(create_app(pipeline, ServeSettings(randn_source="CPU"))) as url:
        response = httpx.post(f"{url}/sdapi/v1/img2img", json=payload, timeout=120)
        assert response.status_code == 200, response.text
        got = np.asarray(decode_png(response.json()["images"][0]))
        masked = httpx.post(f"{url}/sdapi/v1/img2img", json={**payload, "mask": png_b64(references[0])}, timeout=120)
    expected = pipeline.generate(
        PROMPT, steps=STEPS, seed=SEED, height=HEIGHT, width=WIDTH, guidance_scale=3.0, reference_images=references
    )
    np.testing.assert_array_equal(got, np.asarray(expected.images[0]))
    single = pipeline.generate(
        PROMPT, steps=STEPS, seed=SEED, height=HEIGHT, width=WIDTH, guidance_scale=3.0, reference_images=references[:1]
    )
    assert np.abs(expected.array - single.array).max() > 0  # the second reference is used
    assert masked.status_code == 400 and masked.json()["error"]["param"] == "mask", masked.text
    assert "takes no mask" in masked.text
