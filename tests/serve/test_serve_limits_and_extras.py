"""`sdrt serve`'s limits (flags with documented defaults; refusals name the field the client
sent), the A1111 routes around generation that clients call (the ControlNet extension's version
and detect, extra-batch-images, interrogate's 501) driven by webuiapi, and the /docs page."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

from sdrt.cli import main
from sdrt.errors import SdrtError
from sdrt.runtime.pipeline import Pipeline
from sdrt.serve.app import ServeSettings, create_app
from support.serving import decode_png, live_server, png_b64

PROMPT = "a photo of a cat"
USER, PASSWORD = "ann", "s3cret"
MAX_IMAGES, MAX_STEPS = 2, 3


@pytest.fixture(scope="module")
def pipeline(exported_tiny) -> Pipeline:
    return Pipeline.load(exported_tiny("standard"))


@pytest.fixture(scope="module")
def url(pipeline):
    settings = ServeSettings(api_auth=((USER, PASSWORD),), max_images=MAX_IMAGES, max_steps=MAX_STEPS)
    with live_server(create_app(pipeline, settings)) as base:
        yield base


def webui(url):
    import webuiapi

    host, port = url.rsplit("//", 1)[1].split(":")
    return webuiapi.WebUIApi(host=host, port=int(port), username=USER, password=PASSWORD, steps=1)


def client(url):
    return httpx.Client(base_url=url, auth=(USER, PASSWORD), timeout=60)


def shapes(seed: int, size=(96, 64)) -> Image.Image:
    """Shapes over noise: strong and weak edges, ties, broken chains."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, (40, 90, 160))
    draw = ImageDraw.Draw(image)
    draw.ellipse((10, 8, 50, 48), fill=(230, 200, 40))
    draw.rectangle((55, 20, 90, 60), fill=(20, 160, 60))
    pixels = np.asarray(image).astype(int) + rng.integers(-30, 30, (size[1], size[0], 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def test_cli_limit_flags_default_to_the_service_settings():
    from sdrt.cli.serve import serve

    defaults = {param.name: param.default for param in serve.params}
    settings = ServeSettings()
    assert defaults["max_images"] == settings.max_images == 4
    assert defaults["max_steps"] == settings.max_steps == 150
    shown = CliRunner().invoke(main, ["serve", "--help"], terminal_width=200).output
    assert "--max-images INTEGER RANGE" in shown and "[default: 4; x>=1]" in shown
    assert "[default: 150; x>=1]" in shown and "--no-docs" in shown


def test_cli_passes_the_limits_and_refuses_bad_ones_in_one_line(monkeypatch, tmp_path):
    import sdrt.serve.app
    from sdrt.runtime.pipeline import Pipeline as RealPipeline

    seen = {}

    def capture(pipeline, settings, catalog):
        seen["settings"] = settings
        raise SdrtError("stopped before serving")

    monkeypatch.setattr(sdrt.serve.app, "create_app", capture)
    loaded = SimpleNamespace(text_encoders=SimpleNamespace(embeddings=SimpleNamespace(skipped={})))
    monkeypatch.setattr(RealPipeline, "load", staticmethod(lambda folder, **options: loaded))
    (tmp_path / "manifest.json").write_text("{}")  # an export, as far as --model's check looks
    for flags, expected in [
        ([], (4, 150, 20 * 2**20, True)),
        (["--max-images", "9", "--max-steps", "40", "--max-body-mb", "3", "--no-docs"], (9, 40, 3 * 2**20, False)),
    ]:
        result = CliRunner().invoke(main, ["serve", "--model", str(tmp_path), *flags])
        assert result.exit_code != 0 and result.output.strip() == "error: stopped before serving", result.output
        got = seen["settings"]
        assert (got.max_images, got.max_steps, got.max_body_bytes, got.docs) == expected
    refused = CliRunner().invoke(main, ["serve", "--model", str(tmp_path), "--max-images", "0"])
    assert refused.exit_code == 2 and "--max-images" in refused.output and "Traceback" not in refused.output


@pytest.mark.parametrize(
    "payload, param, words",
    [
        ({"batch_size": 1, "n_iter": 3}, "n_iter", "batch_size 1 x n_iter 3 is 3 images; at most 2"),
        ({"batch_size": 2, "n_iter": 2}, "n_iter", "batch_size 2 x n_iter 2 is 4 images"),
        ({"batch_size": 3}, "batch_size", "batch_size must be at most 2 (the server's --max-images)"),
        ({"steps": 4}, "steps", "steps must be at most 3 (the server's --max-steps)"),
        (
            {"enable_hr": True, "hr_second_pass_steps": 4},
            "hr_second_pass_steps",
            "hr_second_pass_steps must be at most 3",
        ),
    ],
)
def test_a1111_limits_name_the_field_sent(url, payload, param, words):
    with client(url) as http:
        response = http.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "steps": 1, **payload})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error


def test_n_iter_within_the_limit_makes_batch_size_x_n_iter_images(url):
    with client(url) as http:
        body = http.post(
            "/sdapi/v1/txt2img",
            json={"prompt": PROMPT, "steps": 1, "seed": 3, "n_iter": MAX_IMAGES, "width": 64, "height": 64},
        ).json()
    assert len(body["images"]) == MAX_IMAGES, body


def test_openai_n_over_the_limit_names_n(url):
    with client(url) as http:
        flags = http.get("/sdapi/v1/cmd-flags").json()
        assert (flags["max_images"], flags["max_steps"]) == (MAX_IMAGES, MAX_STEPS)
        response = http.post("/v1/images/generations", json={"prompt": PROMPT, "n": MAX_IMAGES + 1, "steps": 1})
    assert response.status_code == 400 and response.json()["error"]["param"] == "n", response.text


def test_webuiapi_controlnet_version_and_canny_detect_equal_opencv(url):
    cv2 = pytest.importorskip("cv2")
    api = webui(url)
    assert api.controlnet_version() == 2
    photos = [shapes(0), shapes(1)]
    result = api.controlnet_detect(photos, module="canny", processor_res=64, threshold_a=100, threshold_b=200)
    assert result.info == "Success" and len(result.images) == 2
    for photo, got in zip(photos, result.images):
        expected = cv2.Canny(np.asarray(photo), 100, 200)
        assert np.count_nonzero(expected) > 100
        pixels = np.asarray(got.convert("RGB"))
        assert pixels.shape == (64, 96, 3)
        for channel in range(3):
            np.testing.assert_array_equal(pixels[..., channel], expected)
    # The extension runs canny at processor_res (the short side): 128 doubles this image.
    larger = api.controlnet_detect([photos[0]], module="canny", processor_res=128, threshold_a=100, threshold_b=200)
    assert larger.images[0].size == (192, 128)


def test_controlnet_detect_invert_none_and_refusals(url):
    photo = shapes(2)
    with client(url) as http:  # the extension's own field name for the images
        body = http.post(
            "/controlnet/detect", json={"controlnet_module": "invert", "controlnet_input_images": [png_b64(photo)]}
        ).json()
        np.testing.assert_array_equal(np.asarray(decode_png(body["images"][0])), 255 - np.asarray(photo))
        body = http.post("/controlnet/detect", json={"controlnet_input_images": [png_b64(photo)]}).json()
        np.testing.assert_array_equal(np.asarray(decode_png(body["images"][0])), np.asarray(photo))
        for payload, param in [
            ({"controlnet_module": "depth_midas", "controlnet_input_images": [png_b64(photo)]}, "controlnet_module"),
            ({"controlnet_module": "canny", "controlnet_input_images": []}, "controlnet_input_images"),
            ({"controlnet_input_images": ["bm90IGFuIGltYWdl"]}, "controlnet_input_images[0]"),
            (
                {
                    "controlnet_module": "canny",
                    "controlnet_input_images": [png_b64(photo)],
                    "controlnet_threshold_a": -1,
                },
                "controlnet_threshold_a",
            ),
            (
                {"controlnet_module": "canny", "controlnet_images": [png_b64(photo)], "controlnet_processor_res": 8},
                "controlnet_processor_res",
            ),
        ]:
            response = http.post("/controlnet/detect", json=payload)
            assert response.status_code == 400, response.text
            assert response.json()["error"]["param"] == param, response.text
        assert (
            "depth_midas"
            in http.post(
                "/controlnet/detect",
                json={"controlnet_module": "depth_midas", "controlnet_input_images": [png_b64(photo)]},
            ).json()["error"]["message"]
        )


def test_webuiapi_extra_batch_images_equal_the_single_image_route(url):
    api = webui(url)
    photos = [shapes(3, (64, 64)), shapes(4, (48, 64))]
    options = dict(upscaling_resize=2, upscaler_1="Lanczos", upscaler_2="Nearest", extras_upscaler_2_visibility=0.3)
    batch = api.extra_batch_images(photos, **options)
    assert len(batch.images) == 2
    for photo, got in zip(photos, batch.images):
        single = api.extra_single_image(photo, **options).image
        np.testing.assert_array_equal(np.asarray(got), np.asarray(single))
        lanczos = photo.resize((photo.width * 2, photo.height * 2), Image.LANCZOS)
        nearest = photo.resize((photo.width * 2, photo.height * 2), Image.NEAREST)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(Image.blend(lanczos, nearest, 0.3)))
    with pytest.raises(RuntimeError) as refused:  # --max-images counts the images here too
        api.extra_batch_images([photos[0]] * (MAX_IMAGES + 1), upscaling_resize=2)
    assert refused.value.args[0] == 400 and '"param":"imageList"' in refused.value.args[1].replace(" ", "")
    with client(url) as http:
        response = http.post(
            "/sdapi/v1/extra-batch-images",
            json={"imageList": [{"data": png_b64(photos[0]), "name": "a"}, {"data": "eA==", "name": "b"}]},
        )
        assert response.status_code == 400 and response.json()["error"]["param"] == "imageList[1].data"


def test_webuiapi_interrogate_is_a_501_naming_what_sdrt_lacks(url):
    api = webui(url)
    with pytest.raises(RuntimeError) as refused:
        api.interrogate(shapes(5))
    status, text = refused.value.args
    assert status == 501 and "captioning model" in text and "sdrt does not ship" in text


def test_docs_behind_the_auth_and_off_with_the_flag(pipeline, url):
    with client(url) as http:
        page = http.get("/docs")
        assert page.status_code == 200 and "swagger" in page.text.lower()
        schema = http.get("/openapi.json").json()
        assert {"/sdapi/v1/txt2img", "/controlnet/detect", "/sdapi/v1/extra-batch-images"} <= set(schema["paths"])
    assert httpx.get(f"{url}/docs").status_code == 401
    with live_server(create_app(pipeline, ServeSettings(docs=False))) as bare:
        assert httpx.get(f"{bare}/docs").status_code == 404
        assert httpx.get(f"{bare}/openapi.json").status_code == 404
