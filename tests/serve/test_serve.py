"""`sdrt serve` against a live server on 127.0.0.1: the official openai client, the A1111 routes,
errors, auth, the queue (503), time limits (504), disconnects, and a storm of bad requests."""

from __future__ import annotations

import json
import resource
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from sdrt.runtime.pipeline import Pipeline
from sdrt.serve.app import ServeSettings, create_app
from support.serving import SlowPipeline, decode_png, live_server, png_b64

PROMPT = "a photo of a cat"


@pytest.fixture(scope="module")
def pipeline(exported_tiny) -> Pipeline:
    return Pipeline.load(exported_tiny("standard"))


@pytest.fixture(scope="module")
def url(pipeline):
    with live_server(create_app(pipeline, ServeSettings(max_body_bytes=2**20))) as base:
        yield base


def test_openai_client_unchanged(url, pipeline):
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="unused")
    response = client.images.generate(
        prompt=PROMPT,
        n=2,
        size="96x64",
        response_format="b64_json",
        extra_body={"steps": 2, "seed": 3, "negative_prompt": "blurry"},
    )
    assert len(response.data) == 2
    images = [np.asarray(decode_png(item.b64_json)) for item in response.data]
    assert [item.model_extra["seed"] for item in response.data] == [3, 4]  # image k: seed + k, as reported
    expected = pipeline.generate(
        PROMPT, negative_prompt="blurry", steps=2, seeds=[3, 4], num_images=2, height=64, width=96
    )
    for got, want in zip(images, expected.images):
        np.testing.assert_array_equal(got, np.asarray(want))


def test_a1111_txt2img(url):
    payload = {
        "prompt": PROMPT,
        "negative_prompt": "blurry",
        "steps": 3,
        "cfg_scale": 7,
        "seed": 42,
        "width": 64,
        "height": 64,
        "batch_size": 2,
        "n_iter": 1,
        "sampler_name": "Euler a",
    }
    body = httpx.post(f"{url}/sdapi/v1/txt2img", json=payload, timeout=60).json()
    assert len(body["images"]) == 2
    info = json.loads(body["info"])
    assert info["seed"] == 42 and info["sampler_name"] == "Euler a" and len(info["infotexts"]) == 2
    assert info["all_seeds"] == [42, 43] and "Seed: 43" in info["infotexts"][1]
    assert body["parameters"]["prompt"] == PROMPT
    with decode_png(body["images"][0]) as image:
        assert image.size == (64, 64)
        assert "Sampler: Euler a, CFG scale: 7.0, Seed: 42" in image.info["parameters"]


def test_a1111_img2img_and_inpainting(url):
    source = Image.fromarray((np.random.default_rng(0).random((64, 96, 3)) * 255).astype(np.uint8))
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (24, 16, 72, 48))
    for extra in ({}, {"mask": png_b64(mask)}):
        payload = {
            "prompt": PROMPT,
            "steps": 4,
            "seed": 1,
            "denoising_strength": 0.5,
            "init_images": ["data:image/png;base64," + png_b64(source)],
            **extra,
        }
        response = httpx.post(f"{url}/sdapi/v1/img2img", json=payload, timeout=60)
        assert response.status_code == 200, response.text
        body = response.json()
        assert json.loads(body["info"])["denoising_strength"] == 0.5
        assert decode_png(body["images"][0]).size == (96, 64)


def test_health_and_metrics(url):
    response = httpx.get(f"{url}/health")
    health = response.json()
    assert health["status"] == "ok" and health["native_size"] == [64, 64]
    import os

    assert response.headers["x-sdrt-process"] == str(os.getpid()) == str(health["process"])
    httpx.post(f"{url}/v1/images/generations", json={"prompt": PROMPT, "steps": 1}, timeout=60)
    text = httpx.get(f"{url}/metrics").text
    assert 'sdrt_requests_total{route="/v1/images/generations",status="200"}' in text
    assert 'sdrt_stage_seconds_bucket{stage="denoise",le="+Inf"}' in text
    assert "sdrt_queue_length 0" in text


@pytest.mark.parametrize(
    "route, payload, status, param",
    [
        ("/v1/images/generations", {"prompt": PROMPT, "size": "65x64", "steps": 1}, 400, "width"),
        ("/v1/images/generations", {"prompt": PROMPT, "size": "big"}, 400, "size"),
        ("/v1/images/generations", {"prompt": PROMPT, "steps": 0}, 400, "steps"),
        ("/v1/images/generations", {"prompt": PROMPT, "steps": 999}, 400, "steps"),
        ("/v1/images/generations", {"prompt": PROMPT, "scheduler": "warp"}, 400, "scheduler"),
        ("/v1/images/generations", {"prompt": 123}, 400, "prompt"),
        ("/v1/images/generations", {"n": 1}, 400, "prompt"),
        ("/v1/images/generations", {"prompt": PROMPT, "n": 50}, 400, "n"),
        ("/v1/images/generations", {"prompt": PROMPT, "response_format": "png"}, 400, "response_format"),
        ("/v1/images/generations", {"prompt": PROMPT, "quality": "ultra"}, 400, "quality"),
        ("/v1/images/generations", {"prompt": PROMPT, "style": "moody"}, 400, "style"),
        ("/v1/images/generations", {"prompt": PROMPT, "background": "transparent"}, 400, "background"),
        ("/v1/images/generations", {"prompt": PROMPT, "model": "midjourney"}, 400, "model"),
        ("/v1/images/generations", {"prompt": PROMPT, "seed": -5}, 400, "seed"),
        ("/sdapi/v1/txt2img", {"prompt": PROMPT, "sampler_name": "Nope"}, 400, "sampler_name"),
        ("/sdapi/v1/txt2img", {"prompt": PROMPT, "width": 70, "steps": 1}, 400, "width"),
        ("/sdapi/v1/img2img", {"prompt": PROMPT, "init_images": ["bm90IGFuIGltYWdl"]}, 400, "init_images"),
        ("/sdapi/v1/img2img", {"prompt": PROMPT, "init_images": []}, 400, "init_images"),
        (
            "/sdapi/v1/img2img",
            {"prompt": PROMPT, "init_images": ["x"], "denoising_strength": 2},
            400,
            "denoising_strength",
        ),
    ],
)
def test_bad_requests_name_the_field(url, route, payload, status, param):
    response = httpx.post(f"{url}{route}", json=payload, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param, error


def test_malformed_and_oversized_bodies(url):
    response = httpx.post(
        f"{url}/v1/images/generations", content=b"{not json", timeout=10, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and response.json()["error"]["param"] is None
    assert response.json()["error"]["message"] == "the body is not valid JSON"
    huge = json.dumps({"prompt": "x" * (2**20 + 10)})
    assert (
        httpx.post(
            f"{url}/v1/images/generations", content=huge, timeout=10, headers={"content-type": "application/json"}
        ).status_code
        == 413
    )

    def chunks():  # no Content-Length: counted as it streams
        for _ in range(40):
            yield b"x" * 65536

    response = httpx.post(
        f"{url}/v1/images/generations", content=chunks(), timeout=10, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413


def test_api_key_guards_every_route_but_health(pipeline):
    with live_server(create_app(pipeline, ServeSettings(api_key="s3cret"))) as base:
        assert httpx.get(f"{base}/health").status_code == 200
        assert httpx.get(f"{base}/metrics").status_code == 401
        payload = {"prompt": PROMPT, "steps": 1}
        assert httpx.post(f"{base}/v1/images/generations", json=payload).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert httpx.post(f"{base}/v1/images/generations", json=payload, headers=wrong).status_code == 401
        right = {"Authorization": "Bearer s3cret"}
        assert httpx.post(f"{base}/v1/images/generations", json=payload, headers=right, timeout=60).status_code == 200


def test_full_queue_answers_503_with_retry_after(pipeline):
    slow = SlowPipeline(pipeline)
    with live_server(create_app(slow, ServeSettings(max_queue=1))) as base:
        payload = {"prompt": PROMPT}
        with httpx.Client(timeout=30) as client:
            first = threading.Thread(
                target=client.post, args=(f"{base}/v1/images/generations",), kwargs={"json": payload}
            )
            first.start()
            assert slow.started.acquire(timeout=10)
            busy = httpx.post(f"{base}/v1/images/generations", json=payload, timeout=10)
            assert busy.status_code == 503 and busy.headers["retry-after"] == "5"
            slow.release.set()
            first.join(timeout=30)
        assert httpx.post(f"{base}/v1/images/generations", json=payload, timeout=30).status_code == 200


def test_time_limit_answers_504_and_frees_the_slot(pipeline):
    slow = SlowPipeline(pipeline)
    with live_server(create_app(slow, ServeSettings(timeout_s=0.5))) as base:
        response = httpx.post(f"{base}/v1/images/generations", json={"prompt": PROMPT}, timeout=30)
        assert response.status_code == 504 and slow.cancelled == 1
        slow.release.set()
        assert httpx.post(f"{base}/v1/images/generations", json={"prompt": PROMPT}, timeout=30).status_code == 200


def test_client_disconnect_frees_the_slot(pipeline):
    slow = SlowPipeline(pipeline)
    with live_server(create_app(slow, ServeSettings(max_queue=1))) as base:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{base}/v1/images/generations", json={"prompt": PROMPT}, timeout=0.5)
        deadline = time.monotonic() + 10
        while slow.cancelled == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert slow.cancelled == 1
        slow.release.set()
        assert httpx.post(f"{base}/v1/images/generations", json={"prompt": PROMPT}, timeout=30).status_code == 200


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def test_storm_of_bad_and_good_requests_leaves_the_server_healthy(url):
    rng = np.random.default_rng(0)
    bad = [
        ("/v1/images/generations", {"prompt": None}),
        ("/v1/images/generations", {"prompt": PROMPT, "n": -1}),
        ("/v1/images/generations", {"prompt": PROMPT, "size": "0x0"}),
        ("/v1/images/generations", {"prompt": PROMPT, "guidance_scale": "lots"}),
        ("/sdapi/v1/img2img", {"init_images": ["AAAA"]}),
        ("/sdapi/v1/txt2img", {"steps": "many"}),
        ("/sdapi/v1/txt2img", {"width": 17, "steps": 1}),
        ("/nope", {}),
    ]
    good = ("/v1/images/generations", {"prompt": PROMPT, "steps": 1, "size": "64x64"})

    def storm(count: int) -> list[int]:
        statuses = []
        with httpx.Client(timeout=60) as client:
            for index in range(count):
                if index % 8 == 0:
                    route, payload = good
                    statuses.append(client.post(url + route, json=payload).status_code)
                elif index % 8 == 1:
                    garbage = bytes(rng.integers(0, 256, size=int(rng.integers(1, 500)), dtype=np.uint8))
                    statuses.append(
                        client.post(
                            url + "/sdapi/v1/txt2img", content=garbage, headers={"content-type": "application/json"}
                        ).status_code
                    )
                else:
                    route, payload = bad[index % len(bad)]
                    statuses.append(client.post(url + route, json=payload).status_code)
        return statuses

    storm(80)  # warm-up: caches and arenas settle
    before = rss_bytes()
    statuses = storm(320)
    growth = rss_bytes() - before
    assert statuses.count(200) == 40 and all(status < 500 for status in statuses)
    assert httpx.get(f"{url}/health").json()["status"] == "ok"
    assert growth < 64 * 2**20, f"memory grew by {growth / 2**20:.1f} MiB"


def test_options_report_the_noise_source_sdrt_draws(url):
    """randn_source starts as A1111's default, GPU (torch's CUDA Philox generator, emulated), and
    takes A1111's CPU, GPU and NV; anything else is a 400 naming it."""
    assert httpx.get(f"{url}/sdapi/v1/options", timeout=30).json()["randn_source"] == "GPU"
    refused = httpx.post(f"{url}/sdapi/v1/options", json={"randn_source": "TPU"}, timeout=30)
    assert refused.status_code == 400 and "randn_source" in refused.text, refused.text
    for source in ("NV", "CPU", "GPU"):  # GPU last: the server's other tests draw its default noise
        assert httpx.post(f"{url}/sdapi/v1/options", json={"randn_source": source}, timeout=30).status_code == 200
        assert httpx.get(f"{url}/sdapi/v1/options", timeout=30).json()["randn_source"] == source
