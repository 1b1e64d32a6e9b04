"""One client's request never steers or stops another's (issue 38): a request's model is its own
(A1111's override_settings, OpenAI's `model`), switching the default is the admin's
POST /sdapi/v1/options; /interrupt and /skip stop A1111 jobs only; /health answers while a
large hostile request is being read. Images are compared with each model's own pipeline."""

from __future__ import annotations

import base64
import io
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from sdrt.runtime.pipeline import Pipeline
from sdrt.serve.app import ServeSettings, create_app
from sdrt.serve.catalog import ModelCatalog
from support.serving import decode_png, live_server

PROMPT = "a photo of a cat"
A1111_CFG = 7.0
SIZE = {"width": 64, "height": 64}
WAIT_S = 60
#: /health's answer time while a hostile request is in flight (generous for a loaded 2-core machine).
HEALTH_BOUND_S = 2.0


class Gated:
    """A pipeline whose runs wait until `gate` is set (counting them in `entered`), so a test can
    hold one request running while others arrive."""

    def __init__(self, real: Pipeline):
        self.real = real
        self.gate = threading.Event()
        self.entered = threading.Semaphore(0)

    def __getattr__(self, name):
        return getattr(self.real, name)

    def run(self, request, **kwargs):
        self.entered.release()
        assert self.gate.wait(WAIT_S)
        return self.real.run(request, **kwargs)


@pytest.fixture(scope="module")
def models(exported_tiny, tmp_path_factory):
    """(first, second): the default model and another of --models-dir, each a real pipeline."""
    first, second = exported_tiny("standard"), exported_tiny("v_prediction")
    return Pipeline.load(first), Pipeline.load(second)


def serve_two(models, tmp_path, gated_second: Gated | None = None, default=None, **settings):
    first, second = models
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "second").symlink_to(second.folder, target_is_directory=True)
    by_folder = {first.folder.resolve(): first, second.folder.resolve(): gated_second or second}
    catalog = ModelCatalog(first.folder, folder, lambda path: by_folder[path.resolve()])
    settings.setdefault("randn_source", "CPU")  # torch's CPU noise, as Pipeline.generate draws
    return create_app(default or first, ServeSettings(**settings), catalog)


def expected(pipeline: Pipeline, seed: int, steps: int = 2, guidance=A1111_CFG, sampler="k_euler") -> np.ndarray:
    return np.asarray(
        pipeline.generate(  # the requests name no sampler: A1111's API default Euler (k-diffusion's), OpenAI's lms
            PROMPT, steps=steps, seed=seed, height=64, width=64, guidance_scale=guidance, sampler=sampler
        ).images[0]
    )


def a1111_image(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(decode_png(response.json()["images"][0]))


def openai_image(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(decode_png(response.json()["data"][0]["b64_json"]))


def in_thread(call) -> tuple[threading.Thread, dict]:
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("response", call()))
    thread.start()
    return thread, outcome


def test_a_requests_model_is_its_own(models, tmp_path):
    """An override of the model (A1111) or a `model` (OpenAI) serves that request alone: plain
    requests arriving meanwhile run on the default, two requests naming different models each
    run on theirs, and the default is what it was afterwards."""
    first, second = models
    gated = Gated(second)
    app = serve_two(models, tmp_path, gated, concurrency=2)
    with live_server(app) as url, httpx.Client(base_url=url, timeout=WAIT_S) as http:
        override = {
            "prompt": PROMPT,
            "steps": 2,
            "seed": 1,
            **SIZE,
            "override_settings": {"sd_model_checkpoint": "second"},
        }
        held, held_out = in_thread(lambda: http.post("/sdapi/v1/txt2img", json=override))
        assert gated.entered.acquire(timeout=WAIT_S)  # the override runs (held) on the second model
        plain = http.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "steps": 2, "seed": 2, **SIZE})
        np.testing.assert_array_equal(a1111_image(plain), expected(first, 2))
        named_first = {**override, "seed": 3, "override_settings": {"sd_model_checkpoint": first.folder.name}}
        np.testing.assert_array_equal(a1111_image(http.post("/sdapi/v1/txt2img", json=named_first)), expected(first, 3))
        openai = {"prompt": PROMPT, "steps": 2, "seed": 4, "size": "64x64", "guidance_scale": A1111_CFG}
        np.testing.assert_array_equal(
            openai_image(http.post("/v1/images/generations", json=openai)), expected(first, 4, sampler="lms")
        )
        gated.gate.set()
        held.join(WAIT_S)
        np.testing.assert_array_equal(a1111_image(held_out["response"]), expected(second, 1))
        # OpenAI's `model` runs that request on it, and switches nothing for anyone else.
        on_second = http.post("/v1/images/generations", json={**openai, "seed": 5, "model": "second"})
        np.testing.assert_array_equal(openai_image(on_second), expected(second, 5, sampler="lms"))
        np.testing.assert_array_equal(
            openai_image(http.post("/v1/images/generations", json=openai)), expected(first, 4, sampler="lms")
        )
        assert http.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith(first.folder.name)
        assert http.get("/health").json()["model"] == first.folder.name


def test_the_admin_switch_changes_the_default_for_plain_requests_only(models, tmp_path):
    first, second = models
    app = serve_two(models, tmp_path)
    with live_server(app) as url, httpx.Client(base_url=url, timeout=WAIT_S) as http:
        assert http.post("/sdapi/v1/options", json={"sd_model_checkpoint": "second"}).status_code == 200
        plain = {"prompt": PROMPT, "steps": 2, "seed": 6, **SIZE}
        np.testing.assert_array_equal(a1111_image(http.post("/sdapi/v1/txt2img", json=plain)), expected(second, 6))
        named = {**plain, "override_settings": {"sd_model_checkpoint": first.folder.name}}
        np.testing.assert_array_equal(a1111_image(http.post("/sdapi/v1/txt2img", json=named)), expected(first, 6))
        assert http.get("/health").json()["model"] == second.folder.name


def test_interrupt_and_skip_stop_a1111_jobs_only(models, tmp_path):
    """/interrupt from one client stops the running A1111 job, never a running OpenAI job."""
    first, _ = models
    gated = Gated(first)
    app = serve_two(models, tmp_path, default=gated, concurrency=2)
    with live_server(app) as url, httpx.Client(base_url=url, timeout=WAIT_S) as http:
        openai = {"prompt": PROMPT, "steps": 3, "seed": 7, "size": "64x64", "guidance_scale": A1111_CFG}
        a1111 = {"prompt": PROMPT, "steps": 2, "seed": 8, **SIZE}
        openai_thread, openai_out = in_thread(lambda: http.post("/v1/images/generations", json=openai))
        a1111_thread, a1111_out = in_thread(lambda: http.post("/sdapi/v1/txt2img", json=a1111))
        assert gated.entered.acquire(timeout=WAIT_S) and gated.entered.acquire(timeout=WAIT_S)
        for route in ("skip", "interrupt"):
            assert http.post(f"/sdapi/v1/{route}").status_code == 200
        gated.gate.set()
        openai_thread.join(WAIT_S)
        a1111_thread.join(WAIT_S)
        np.testing.assert_array_equal(openai_image(openai_out["response"]), expected(first, 7, steps=3, sampler="lms"))
        assert a1111_out["response"].status_code == 200
        info = a1111_out["response"].json()["info"]
        assert '"skipped": true' in info or '"interrupted": true' in info


def big_png(pixels_side: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGBA", (pixels_side, pixels_side), (10, 20, 30, 0)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_health_answers_while_hostile_requests_are_read(models, tmp_path):
    """Large prompts, long style lists and 25-megapixel images are read off the event loop (or
    refused by a bound before any work): /health answers meanwhile."""
    side = 5000  # 25 megapixels: under the 40-megapixel input limit, about a second to decode
    image = big_png(side)
    png = base64.b64decode(image)
    tags = "<lora:x:1>" * 1_500_000
    hostile = [
        ("/sdapi/v1/png-info", {"json": {"image": image}}),
        (  # the image is decoded, then the mask is refused: no generation
            "/v1/images/edits",
            {"files": {"image": ("a.png", png), "mask": ("m.png", b"not an image")}, "data": {"prompt": PROMPT}},
        ),
        ("/sdapi/v1/txt2img", {"json": {"prompt": tags}}),
        ("/sdapi/v1/txt2img", {"json": {"prompt": "a", "styles": ["s"] * 60_000}}),
    ]
    app = serve_two(models, tmp_path, max_images=1, max_body_bytes=64 * 2**20)
    with live_server(app) as url, httpx.Client(base_url=url, timeout=WAIT_S) as http:
        for route, content in hostile:
            done = threading.Event()

            def post(route=route, content=content, done=done):
                try:
                    with httpx.Client(base_url=url, timeout=WAIT_S) as other:
                        other.post(route, **content)
                finally:
                    done.set()

            thread = threading.Thread(target=post)
            thread.start()
            slowest = 0.0
            while not done.is_set():
                started = time.monotonic()
                assert http.get("/health").status_code == 200
                slowest = max(slowest, time.monotonic() - started)
                time.sleep(0.05)
            thread.join(WAIT_S)
            assert slowest < HEALTH_BOUND_S, (route, slowest)
