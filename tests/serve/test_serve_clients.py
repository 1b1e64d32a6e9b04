"""`sdrt serve` driven by the clients people already use (A1111's `webuiapi`, the official
`openai` client) and the A1111 calls around generation: listings, options, model switching,
interrupt/skip, HTTP basic auth, refusals of what sdrt cannot honour, A1111's mask handling,
OpenAI edits/variations. Images are compared with the pipeline's own results for the same
settings (the pipeline itself equals diffusers: test_pipeline, test_inpaint)."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image, ImageOps

from sdrt.runtime.pipeline import Pipeline
from sdrt.serve.app import ServeSettings, create_app
from sdrt.serve.catalog import ModelCatalog
from sdrt.serve.openai_compat import OPENAI_DEFAULT_STEPS, QUALITY_STEPS, WARNINGS_HEADER
from support.serving import SlowPipeline, decode_png, live_server, png_b64

PROMPT = "a photo of a cat"
USER, PASSWORD = "ann", "s3cret"
A1111_CFG = 7.0  # A1111's default cfg_scale (sdrt's own default is diffusers' 7.5)


@pytest.fixture(scope="module")
def served(exported_tiny, tmp_path_factory):
    """A server with basic auth and a models folder of two exports; yields (url, pipelines)."""
    first, second = exported_tiny("standard"), exported_tiny("v_prediction")
    models = tmp_path_factory.mktemp("models")
    (models / "second").symlink_to(second, target_is_directory=True)
    pipelines = {first.resolve(): Pipeline.load(first), second.resolve(): Pipeline.load(second)}
    catalog = ModelCatalog(first, models, lambda folder: pipelines[folder.resolve()])
    styles = tmp_path_factory.mktemp("styles") / "styles.csv"
    styles.write_text('name,prompt,negative_prompt\nCinematic,"{prompt}, cinematic still",blurry\nGrain,film grain,\n')
    # torch's CPU noise, as Pipeline.generate draws (the server's default is A1111's GPU)
    settings = ServeSettings(api_auth=((USER, PASSWORD),), styles_file=str(styles), randn_source="CPU")
    app = create_app(pipelines[first.resolve()], settings, catalog)
    with live_server(app) as url:
        yield url, pipelines[first.resolve()], pipelines[second.resolve()]


def client(url, auth=(USER, PASSWORD)):
    return httpx.Client(base_url=url, auth=auth, timeout=60)


def webui(url):
    import webuiapi

    host, port = url.rsplit("//", 1)[1].split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port), username=USER, password=PASSWORD, steps=2)
    return api


def test_webuiapi_lists_switches_and_generates(served):
    url, first, second = served
    api = webui(url)
    api.util_wait_for_ready(check_interval=0.1)
    assert "Euler a" in api.util_get_sampler_names() and "karras" in api.util_get_scheduler_names()
    names = api.util_get_model_names()
    assert len(names) == 2 and any(name.startswith("second [") for name in names)
    # webuiapi sends every A1111 field, at A1111's defaults: all must be accepted.
    result = api.txt2img(prompt=PROMPT, seed=5, width=64, height=64, cfg_scale=7.0)
    expected = first.generate(PROMPT, steps=2, seed=5, sampler="k_euler_a", height=64, width=64, guidance_scale=7.0)
    np.testing.assert_array_equal(np.asarray(result.image), np.asarray(expected.images[0]))
    assert result.info["sd_model_name"] == first.folder.name
    api.util_set_model("second")
    try:
        assert api.util_get_current_model().startswith("second [")
        result = api.txt2img(prompt=PROMPT, seed=5, width=64, height=64)
        expected = second.generate(
            PROMPT, steps=2, seed=5, sampler="k_euler_a", height=64, width=64, guidance_scale=7.0
        )
        np.testing.assert_array_equal(np.asarray(result.image), np.asarray(expected.images[0]))
    finally:
        api.util_set_model(first.folder.name)
    assert api.util_get_current_model().startswith(first.folder.name)
    for listing in (
        api.get_upscalers(),
        api.get_sd_vae(),
        api.get_prompt_styles(),
        api.get_memory(),
        api.get_cmd_flags(),
        api.get_scripts(),
        api.get_hypernetworks(),
        api.get_face_restorers(),
        api.get_latent_upscale_modes(),
        api.get_embeddings(),
        api.get_loras(),
    ):
        assert listing is not None


def test_basic_auth_is_required(served):
    url = served[0]
    response = httpx.get(f"{url}/sdapi/v1/samplers")
    assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Basic")
    assert httpx.get(f"{url}/sdapi/v1/samplers", auth=(USER, "wrong")).status_code == 401
    assert httpx.get(f"{url}/health").status_code == 200


def test_sampler_and_schedule_type_pairs(served):
    url, first, _ = served
    with client(url) as http:
        body = http.post(
            "/sdapi/v1/txt2img",
            json={
                "prompt": PROMPT,
                "steps": 3,
                "seed": 2,
                "width": 64,
                "height": 64,
                "sampler_name": "Euler",
                "scheduler": "Karras",
            },
        ).json()
        expected = first.generate(
            PROMPT, steps=3, seed=2, sampler="k_euler", schedule="karras", height=64, width=64, guidance_scale=A1111_CFG
        )
        np.testing.assert_array_equal(np.asarray(decode_png(body["images"][0])), np.asarray(expected.images[0]))
        assert "Sampler: Euler, Schedule type: Karras" in json.loads(body["info"])["infotexts"][0]
        old_name = http.post(
            "/sdapi/v1/txt2img",
            json={
                "prompt": PROMPT,
                "steps": 2,
                "seed": 2,
                "width": 64,
                "height": 64,
                "sampler_name": "DPM++ 2M Karras",
            },
        )
        new_name = http.post(
            "/sdapi/v1/txt2img",
            json={
                "prompt": PROMPT,
                "steps": 2,
                "seed": 2,
                "width": 64,
                "height": 64,
                "sampler_name": "DPM++ 2M",
                "scheduler": "karras",
            },
        )
        assert json.loads(old_name.json()["info"])["infotexts"][0] != ""
        np.testing.assert_array_equal(
            np.asarray(decode_png(old_name.json()["images"][0])), np.asarray(decode_png(new_name.json()["images"][0]))
        )
        refused = http.post(
            "/sdapi/v1/txt2img", json={"prompt": PROMPT, "steps": 1, "sampler_name": "DDIM", "scheduler": "Karras"}
        )
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "scheduler"
        assert "ddim" in refused.json()["error"]["message"].lower()


@pytest.mark.parametrize(
    "payload, param",
    [
        ({"tiling": True}, "tiling"),
        ({"restore_faces": True}, "restore_faces"),
        ({"styles": ["Nope"]}, "styles"),
        ({"enable_hr": True, "hr_upscaler": "R-ESRGAN 4x+"}, "hr_upscaler"),
        ({"enable_hr": True, "hr_checkpoint_name": "other"}, "hr_checkpoint_name"),
        ({"subseed_strength": 1.5}, "subseed_strength"),
        ({"script_name": "x/y/z plot"}, "script_name"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"eta": 0.5, "sampler_name": "LCM"}, "eta"),
        ({"override_settings": {"sd_model_checkpoint": "nope"}}, "override_settings.sd_model_checkpoint"),
        ({"override_settings": {"samples_format": "jpg"}}, "override_settings.samples_format"),
        ({"override_settings": {"sd_vae": "vae-ft-mse-840000.safetensors"}}, "override_settings.sd_vae"),
        ({"alwayson_scripts": {"ADetailer": {"args": [True, {"ad_model": "face_yolov8n.pt"}]}}}, "alwayson_scripts"),
        ({"width": 4096}, "width"),
    ],
)
def test_what_sdrt_cannot_honour_is_refused_by_name(served, payload, param):
    with client(served[0]) as http:
        response = http.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "steps": 1, **payload})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param, response.json()
    if param == "width":
        assert "nearest valid width" in response.json()["error"]["message"]


def test_cosmetic_fields_warn_and_neutral_ones_pass(served):
    with client(served[0]) as http:
        response = http.post(
            "/sdapi/v1/txt2img",
            json={
                "prompt": PROMPT,
                "steps": 1,
                "width": 64,
                "height": 64,
                "save_images": True,
                "tiling": False,
                "eta": 1.0,
                "sampler_name": "Euler a",
                "alwayson_scripts": {"ADetailer": {"args": [False]}},
                "override_settings": {"samples_format": "png", "CLIP_stop_at_last_layers": 2},
                "send_images": False,
            },
        )
    assert response.status_code == 200, response.text
    body = response.json()
    info = json.loads(body["info"])
    assert body["images"] == [] and info["clip_skip"] == 2
    assert any(warning.startswith("save_images:") for warning in info["warnings"])


def test_options_set_the_server_defaults(served):
    url, first, _ = served
    with client(url) as http:
        assert http.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2}).status_code == 200
        try:
            assert http.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 2
            body = http.post(
                "/sdapi/v1/txt2img",
                json={"prompt": PROMPT, "steps": 2, "seed": 4, "width": 64, "height": 64, "sampler_name": "Euler"},
            ).json()
        finally:
            http.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1})
        expected = first.generate(
            PROMPT, steps=2, seed=4, sampler="k_euler", clip_skip=2, height=64, width=64, guidance_scale=A1111_CFG
        )
        np.testing.assert_array_equal(np.asarray(decode_png(body["images"][0])), np.asarray(expected.images[0]))
        refused = http.post("/sdapi/v1/options", json={"show_warnings": True})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "options.show_warnings"


def test_extras_upscale_and_png_info(served):
    url, first, _ = served
    picture = first.generate(PROMPT, steps=1, seed=1, height=64, width=64).images[0]
    with client(url) as http:
        body = http.post(
            "/sdapi/v1/extra-single-image",
            json={"image": png_b64(picture), "upscaling_resize": 2, "upscaler_1": "Lanczos"},
        ).json()
        assert "image" in body, body
        expected = picture.resize((128, 128), resample=Image.LANCZOS)
        np.testing.assert_array_equal(np.asarray(decode_png(body["image"])), np.asarray(expected))
        refused = http.post(
            "/sdapi/v1/extra-single-image", json={"image": png_b64(picture), "upscaler_1": "R-ESRGAN 4x+"}
        )
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "upscaler_1"
        made = http.post(
            "/sdapi/v1/txt2img", json={"prompt": PROMPT, "steps": 1, "seed": 9, "width": 64, "height": 64}
        ).json()["images"][0]
        info = http.post("/sdapi/v1/png-info", json={"image": made}).json()
        assert info["parameters"]["Seed"] == "9" and info["info"].startswith(PROMPT)


def overlay_paste(generated: np.ndarray, original: np.ndarray, overlay: np.ndarray) -> np.ndarray:
    weight = overlay.astype(np.float32)[..., None] / 255
    return np.clip(np.rint(generated * weight + original * (1 - weight)), 0, 255).astype(np.uint8)


def test_a1111_mask_invert_blur_and_paste_back(served):
    """A1111's rules (docs/serve.md), computed here independently: OpenCV's Gaussian for the
    blur, the blurred mask doubled as the paste-back alpha, the original outside it."""
    import cv2

    url, first, _ = served
    rng = np.random.default_rng(3)
    source = Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    base = {
        "prompt": PROMPT,
        "steps": 3,
        "seed": 7,
        "width": 64,
        "height": 64,
        "denoising_strength": 0.9,
        "sampler_name": "Euler",
        "init_images": [png_b64(source)],
        "mask": png_b64(mask),
        "inpainting_fill": 1,
        "inpaint_full_res": False,
    }
    with client(url) as http:
        inverted = http.post("/sdapi/v1/img2img", json={**base, "mask_blur": 0, "inpainting_mask_invert": 1}).json()
        blurred = http.post("/sdapi/v1/img2img", json={**base, "mask_blur": 4}).json()
    flipped = ImageOps.invert(mask)
    expected = first.generate(
        PROMPT,
        steps=3,
        seed=7,
        sampler="k_euler",  # A1111's "Euler" from an image: k-diffusion's Euler, as A1111
        init_image=source,
        mask_image=flipped,
        strength=0.9,
        guidance_scale=A1111_CFG,
    ).images[0]
    overlay = np.clip(np.asarray(flipped, dtype=np.float32) * 2, 0, 255)
    want = overlay_paste(np.asarray(expected, dtype=np.float32), np.asarray(source, dtype=np.float32), overlay)
    np.testing.assert_array_equal(np.asarray(decode_png(inverted["images"][0])), want)
    size = 2 * int(2.5 * 4 + 0.5) + 1
    soft = cv2.GaussianBlur(np.asarray(mask, dtype=np.float32), (size, size), 4, borderType=cv2.BORDER_REFLECT_101)
    soft = Image.fromarray(np.clip(np.rint(soft), 0, 255).astype(np.uint8))
    expected = first.generate(
        PROMPT,
        steps=3,
        seed=7,
        sampler="k_euler",  # A1111's "Euler" from an image: k-diffusion's Euler, as A1111
        init_image=source,
        mask_image=soft,
        strength=0.9,
        guidance_scale=A1111_CFG,
    ).images[0]
    overlay = np.clip(np.asarray(soft, dtype=np.float32) * 2, 0, 255)
    want = overlay_paste(np.asarray(expected, dtype=np.float32), np.asarray(source, dtype=np.float32), overlay)
    got = np.asarray(decode_png(blurred["images"][0])).astype(int)
    assert np.abs(got - want).max() <= 1  # the blur's rounding may differ by one level from OpenCV's
    outside = np.asarray(soft) == 0
    np.testing.assert_array_equal(np.asarray(decode_png(blurred["images"][0]))[outside], np.asarray(source)[outside])


def test_a1111_only_masked_crops_inpaints_and_pastes(served):
    """inpaint_full_res: the mask's box (grown by the padding; here already the request's aspect
    ratio) is cropped, inpainted at the request's size and put back (Lanczos both ways)."""
    url, first, _ = served
    rng = np.random.default_rng(4)
    source = Image.fromarray((rng.random((128, 128, 3)) * 255).astype(np.uint8))
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (44, 40, 68, 64))  # 24x24 at (44, 40); with padding 4: the box (40, 36)-(72, 68)
    with client(url) as http:
        body = http.post(
            "/sdapi/v1/img2img",
            json={
                "prompt": PROMPT,
                "steps": 2,
                "seed": 3,
                "width": 64,
                "height": 64,
                "sampler_name": "Euler",
                "denoising_strength": 0.8,
                "init_images": [png_b64(source)],
                "mask": png_b64(mask),
                "mask_blur": 0,
                "inpainting_fill": 1,
                "inpaint_full_res": True,
                "inpaint_full_res_padding": 4,
            },
        ).json()
    box = (40, 36, 72, 68)
    crop = source.crop(box).resize((64, 64), resample=Image.LANCZOS)
    crop_mask = mask.crop(box).resize((64, 64), resample=Image.LANCZOS)
    inner = first.generate(
        PROMPT,
        steps=2,
        seed=3,
        sampler="k_euler",  # A1111's "Euler" from an image: k-diffusion's Euler
        init_image=crop,
        mask_image=crop_mask,
        strength=0.8,
        guidance_scale=A1111_CFG,
    ).images[0]
    placed = source.copy()
    placed.paste(inner.resize((32, 32), resample=Image.LANCZOS), box[:2])
    want = overlay_paste(
        np.asarray(placed, dtype=np.float32), np.asarray(source, dtype=np.float32), np.asarray(mask, dtype=np.float32)
    )
    got = decode_png(body["images"][0])
    assert got.size == (128, 128)
    np.testing.assert_array_equal(np.asarray(got), want)


def test_interrupt_and_skip(pipeline_for_slow):
    slow = SlowPipeline(pipeline_for_slow)
    with live_server(create_app(slow, ServeSettings())) as url:
        for route, stopped, images in (("skip", "skipped", 1), ("interrupt", "interrupted", 0)):
            slow.release.clear()
            outcome = {}

            def post():
                outcome["response"] = httpx.post(  # noqa: B023 (the thread is joined in this iteration)
                    f"{url}/sdapi/v1/txt2img", json={"prompt": PROMPT, "n_iter": 2}, timeout=30
                )

            thread = threading.Thread(target=post)
            thread.start()
            assert slow.started.acquire(timeout=10)
            time.sleep(0.1)
            assert httpx.get(f"{url}/sdapi/v1/progress").json()["state"]["job_count"] == 1
            assert httpx.post(f"{url}/sdapi/v1/{route}").status_code == 200
            if images:  # the second iteration runs to its end
                assert slow.started.acquire(timeout=10)
                slow.release.set()
            thread.join(timeout=30)
            body = outcome["response"].json()
            assert outcome["response"].status_code == 200, body
            assert len(body["images"]) == images and json.loads(body["info"])[stopped] is True


@pytest.fixture(scope="module")
def pipeline_for_slow(served):
    return served[1]


def test_openai_client_generations_edits_variations_and_models(served):
    from openai import OpenAI

    url, first, _ = served
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    api = OpenAI(base_url=f"{url}/v1", api_key="unused", default_headers={"Authorization": f"Basic {token}"})
    assert {model.id for model in api.models.list()} == {first.folder.name, "second"}
    made = api.images.generate(
        prompt=PROMPT, size="auto", response_format="b64_json", extra_body={"steps": 2, "seed": 8}
    )
    item = made.data[0]
    assert item.model_extra["seed"] == 8
    picture = decode_png(item.b64_json)
    assert picture.size == (64, 64) and "Seed: 8" in picture.info["parameters"]
    rng = np.random.default_rng(5)
    source = Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8))
    alpha = Image.new("L", (64, 64), 255)
    alpha.paste(0, (16, 16, 48, 48))  # transparent = edit here
    mask = Image.merge("RGBA", (*source.split(), alpha))
    files = {name: io.BytesIO(base64.b64decode(png_b64(image))) for name, image in (("image", source), ("mask", mask))}
    edited = api.images.edit(
        image=("image.png", files["image"]),
        mask=("mask.png", files["mask"]),
        prompt=PROMPT,
        response_format="b64_json",
        extra_body={"steps": 2, "seed": 6},
    )
    expected = first.generate(
        PROMPT, steps=2, seed=6, init_image=source, mask_image=ImageOps.invert(alpha), strength=1.0
    ).images[0]
    np.testing.assert_array_equal(np.asarray(decode_png(edited.data[0].b64_json)), np.asarray(expected))
    varied = api.images.create_variation(
        image=("image.png", io.BytesIO(base64.b64decode(png_b64(source)))),
        response_format="b64_json",
        extra_body={"steps": 2, "seed": 6},
    )
    expected = first.generate("", steps=2, seed=6, init_image=source, strength=0.75).images[0]
    np.testing.assert_array_equal(np.asarray(decode_png(varied.data[0].b64_json)), np.asarray(expected))
    with pytest.raises(Exception, match="background"):
        api.images.generate(prompt=PROMPT, background="transparent", response_format="b64_json")
    with pytest.raises(Exception, match="model"):
        api.images.generate(prompt=PROMPT, model="midjourney", response_format="b64_json")


def openai_client(url: str, auth: tuple[str, str] | None = (USER, PASSWORD)):
    from openai import OpenAI

    headers = {}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    return OpenAI(base_url=f"{url}/v1", api_key="unused", default_headers=headers)


def test_openai_client_dall_e_3_defaults_answer_a_url_equal_to_the_b64_image(served):
    """What an app written for DALL-E 3 sends (model, prompt, size; nothing else) gets a URL
    behind the same auth, holding the image the b64 answer gives for the same seed."""
    url = served[0]
    api = openai_client(url)
    made = api.images.generate(model="dall-e-3", prompt=PROMPT, size="64x64")
    item = made.data[0]
    assert item.b64_json is None and item.url.startswith(f"{url}/v1/images/files/")
    assert made.model_extra["sdrt"]["parameters"]["steps"] == OPENAI_DEFAULT_STEPS
    assert httpx.get(item.url, timeout=60).status_code == 401
    with client(url) as http:
        fetched = http.get(item.url)
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
    same = api.images.generate(
        model="gpt-image-1", prompt=PROMPT, size="64x64", extra_body={"seed": item.model_extra["seed"]}
    )
    assert same.data[0].url is None
    assert fetched.content == base64.b64decode(same.data[0].b64_json)
    for name, answer in (("dall-e-2", "url"), ("gpt-image-1-mini", "b64_json")):
        other = api.images.generate(model=name, prompt=PROMPT, size="64x64", extra_body={"steps": 1})
        assert getattr(other.data[0], answer) is not None, name
    edited = api.images.edit(
        model="dall-e-2", image=("image.png", io.BytesIO(fetched.content)), prompt=PROMPT, extra_body={"steps": 2}
    )
    assert edited.data[0].url.startswith(f"{url}/v1/images/files/")


@pytest.mark.parametrize(
    "model, quality", [("dall-e-3", "standard"), ("dall-e-3", "hd"), ("gpt-image-1", "low"), ("gpt-image-1", "high")]
)
def test_openai_quality_is_a_steps_preset(served, model, quality):
    api = openai_client(served[0])
    made = api.images.generate(model=model, prompt=PROMPT, size="64x64", quality=quality, response_format="b64_json")
    assert made.model_extra["sdrt"]["parameters"]["steps"] == QUALITY_STEPS[quality]
    own = api.images.generate(
        model=model, prompt=PROMPT, quality=quality, extra_body={"steps": 2}, response_format="b64_json"
    )
    assert own.model_extra["sdrt"]["parameters"]["steps"] == 2


def test_openai_style_without_a_server_style_is_accepted_with_a_warning(served):
    api = openai_client(served[0])
    raw = api.images.with_raw_response.generate(
        model="dall-e-3", prompt=PROMPT, size="64x64", style="vivid", extra_body={"steps": 1}
    )
    made = raw.parse()
    assert made.data[0].revised_prompt == PROMPT
    assert any(warning.startswith("style:") for warning in made.model_extra["sdrt"]["warnings"])
    assert "style:" in raw.headers[WARNINGS_HEADER]


@pytest.fixture(scope="module")
def short_lived(served, tmp_path_factory):
    """A server whose URL images last URL_TTL_S seconds and whose styles include DALL-E 3's vivid."""
    styles = tmp_path_factory.mktemp("vivid") / "styles.csv"
    styles.write_text('name,prompt,negative_prompt\nVivid,"{prompt}, vivid colours",dull\n')
    settings = ServeSettings(image_url_ttl_s=URL_TTL_S, max_url_images=1, styles_file=str(styles))
    with live_server(create_app(served[1], settings)) as url:
        yield url


URL_TTL_S = 2.0


def test_openai_image_urls_expire(short_lived):
    api = openai_client(short_lived, auth=None)
    made = api.images.generate(model="dall-e-3", prompt=PROMPT, size="64x64", extra_body={"steps": 1})
    assert httpx.get(made.data[0].url, timeout=60).status_code == 200
    time.sleep(URL_TTL_S)
    gone = httpx.get(made.data[0].url, timeout=60)
    assert gone.status_code == 404 and "--url-ttl" in gone.json()["error"]["message"]
    with pytest.raises(Exception, match="url-images") as refused:  # more than the server keeps
        api.images.generate(model="dall-e-3", prompt=PROMPT, size="64x64", n=2, extra_body={"steps": 1})
    assert refused.value.body["param"] == "n"


def test_openai_style_applies_the_server_style_of_that_name(short_lived):
    api = openai_client(short_lived, auth=None)
    raw = api.images.with_raw_response.generate(
        model="dall-e-3", prompt=PROMPT, size="64x64", style="vivid", extra_body={"steps": 1}
    )
    made = raw.parse()
    assert made.data[0].revised_prompt == f"{PROMPT}, vivid colours"
    assert made.model_extra["sdrt"]["warnings"] == [] and WARNINGS_HEADER not in raw.headers


def test_shutdown_stops_running_and_waiting_generations(pipeline_for_slow):
    """What Ctrl-C / SIGTERM on `sdrt serve` does first (sdrt.serve.http.StoppingServer)."""
    slow = SlowPipeline(pipeline_for_slow)
    app = create_app(slow, ServeSettings())
    with live_server(app) as url:
        answers = []
        threads = [
            threading.Thread(
                target=lambda: answers.append(
                    httpx.post(f"{url}/v1/images/generations", json={"prompt": PROMPT}, timeout=30)
                )
            )
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        assert slow.started.acquire(timeout=10)
        time.sleep(0.2)  # the second request waits in the queue
        started = time.monotonic()
        app.state.service.shutdown()
        for thread in threads:
            thread.join(timeout=30)
        assert time.monotonic() - started < 5
        assert sorted(answer.status_code for answer in answers) == [503, 503]
        assert slow.cancelled == 1


def test_prompt_styles_apply_as_a1111_does(served):
    """A1111's rule: "{prompt}" in a style takes the prompt, otherwise the style is appended."""
    url, first, _ = served
    with client(url) as http:
        listed = http.get("/sdapi/v1/prompt-styles").json()
        body = http.post(
            "/sdapi/v1/txt2img",
            json={
                "prompt": PROMPT,
                "negative_prompt": "ugly",
                "steps": 2,
                "seed": 1,
                "width": 64,
                "height": 64,
                "styles": ["Cinematic", "Grain"],
            },
        ).json()
    assert [style["name"] for style in listed] == ["Cinematic", "Grain"]
    info = json.loads(body["info"])
    assert info["prompt"] == f"{PROMPT}, cinematic still, film grain" and info["negative_prompt"] == "ugly, blurry"
    expected = first.generate(
        f"{PROMPT}, cinematic still, film grain",
        negative_prompt="ugly, blurry",
        steps=2,
        seed=1,
        height=64,
        width=64,
        guidance_scale=A1111_CFG,
        sampler="k_euler",  # no sampler named: A1111's API default, Euler
    )
    np.testing.assert_array_equal(np.asarray(decode_png(body["images"][0])), np.asarray(expected.images[0]))


def test_override_checkpoint_for_one_request_then_back(served):
    url, first, second = served
    payload = {
        "prompt": PROMPT,
        "steps": 2,
        "seed": 4,
        "width": 64,
        "height": 64,
        "override_settings": {"sd_model_checkpoint": "second"},
    }
    with client(url) as http:
        body = http.post("/sdapi/v1/txt2img", json=payload).json()
        expected = second.generate(  # no sampler named: A1111's API default, Euler
            PROMPT, steps=2, seed=4, height=64, width=64, guidance_scale=A1111_CFG, sampler="k_euler"
        )
        np.testing.assert_array_equal(np.asarray(decode_png(body["images"][0])), np.asarray(expected.images[0]))
        assert http.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith(first.folder.name)
        # A request's overrides never persist: keeping them is the admin's POST /sdapi/v1/options.
        kept = http.post("/sdapi/v1/txt2img", json={**payload, "override_settings_restore_afterwards": False})
        assert kept.status_code == 400, kept.text
        assert kept.json()["error"]["param"] == "override_settings_restore_afterwards"
        assert http.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith(first.folder.name)


def test_webuiapi_batch_gets_a_seed_per_image_and_ddim_its_eta(served):
    """webuiapi's defaults (eta 1.0) with DDIM and batch_size 2: image k has seed + k, reported
    in all_seeds and each infotext, and equals that seed alone."""
    url, first, _ = served
    result = webui(url).txt2img(prompt=PROMPT, seed=7, batch_size=2, width=64, height=64, sampler_name="DDIM")
    assert result.info["all_seeds"] == [7, 8] and result.info["seed"] == 7
    for index, seed in enumerate([7, 8]):
        alone = first.generate(PROMPT, steps=2, seed=seed, sampler="a1111_ddim", eta=1.0, guidance_scale=A1111_CFG)
        np.testing.assert_array_equal(np.asarray(result.images[index]), np.asarray(alone.images[0]))
        assert f"Seed: {seed}," in result.info["infotexts"][index]
        assert f"Seed: {seed}," in result.images[index].info["parameters"]


class SlowSteps:
    """The real pipeline, a pause after every step: a long job to interrupt."""

    def __init__(self, real: Pipeline, pause_s: float = 0.05):
        self.real, self.pause_s = real, pause_s

    def __getattr__(self, name):
        return getattr(self.real, name)

    def run(self, request, progress=None, cancel=None, preview=None, **options):
        def paused(done: int, total: int) -> None:
            time.sleep(self.pause_s)
            if progress is not None:
                progress(done, total)

        return self.real.run(request, progress=paused, cancel=cancel, preview=preview, **options)


def test_interrupt_answers_with_the_partial_image(pipeline_for_slow):
    """A1111 decodes an interrupted job's latents so far and returns them: webuiapi's
    result.image works, the infotext says the job's settings, and the rest of n_iter is dropped."""
    import webuiapi

    with live_server(create_app(SlowSteps(pipeline_for_slow), ServeSettings())) as url:
        host, port = url.rsplit("//", 1)[1].split(":")
        api = webuiapi.WebUIApi(host=host, port=int(port))
        outcome = {}
        thread = threading.Thread(
            target=lambda: outcome.update(
                result=api.txt2img(prompt=PROMPT, seed=3, steps=100, n_iter=2, width=64, height=64)
            )
        )
        thread.start()
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/sdapi/v1/progress").json()["state"]["sampling_step"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        api.interrupt()
        thread.join(timeout=30)
    result = outcome["result"]
    assert result.info["interrupted"] is True and len(result.images) == 1
    assert result.image.size == (64, 64) and np.asarray(result.image).std() > 1
    assert result.info["all_seeds"] == [3] and "Steps: 100," in result.info["infotexts"][0]
    finished = pipeline_for_slow.generate(PROMPT, steps=100, seed=3, sampler="k_euler_a", guidance_scale=A1111_CFG)
    assert np.abs(np.asarray(result.image, np.int16) - np.asarray(finished.images[0], np.int16)).max() > 2
