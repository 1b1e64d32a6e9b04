"""The server under hostile input (issue 21, classes 4 and 5): one request's failure never
fails its batch; no body gives a 500 (every field x every hostile value); the HTTP layer's own
errors are JSON; /metrics labels stay a bounded set across a storm of unknown paths."""

from __future__ import annotations

import itertools
import json
import random
import socket
import threading

import httpx
import pytest

from sdrt.runtime.pipeline import Pipeline
from sdrt.serve.app import ServeSettings, create_app
from sdrt.serve.http import JsonErrorProtocol
from support.serving import live_server

KEY = "secret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
BASES = {
    "/v1/images/generations": {"prompt": "a cat", "steps": 1},
    "/sdapi/v1/txt2img": {"prompt": "a cat", "steps": 1},
}
# Raw JSON texts: what a JSON encoder would not write, but a client may send.
HOSTILE = [
    '"\\ud800"',
    '"a\\udcff"',
    "9" * 5000,
    "-" + "9" * 5000,
    "1e309",
    "NaN",
    "Infinity",
    '"²x64"',
    '"٣x64"',
    "[]",
    "{}",
    "null",
    "true",
    '""',
    '"' + "a" * 100_000 + '"',
    "[" * 3000 + "]" * 3000,
    "-1",
    "0",
    "1.5",
    '"64x64x64"',
    '"\\u0000"',
]


@pytest.fixture(scope="module")
def pipeline(exported_tiny) -> Pipeline:
    return Pipeline.load(exported_tiny("standard"))


@pytest.fixture(scope="module")
def url(pipeline):
    app = create_app(pipeline, ServeSettings(api_key=KEY, max_body_bytes=2**20))
    with live_server(app) as base:
        yield base


def _cases():
    for route, base in BASES.items():
        fields = (
            ["prompt", "negative_prompt", "n", "size", "steps", "guidance_scale", "seed", "sampler", "response_format"]
            if route.startswith("/v1")
            else [
                "prompt",
                "negative_prompt",
                "steps",
                "cfg_scale",
                "seed",
                "width",
                "height",
                "batch_size",
                "n_iter",
                "sampler_name",
                "scheduler",
            ]
        )
        for field, value in itertools.product(fields, HOSTILE):
            body = json.dumps({**base, field: "@@"}).replace('"@@"', value)
            yield route, field, body


def test_no_hostile_field_value_gives_a_500(url):
    cases = list(_cases())
    assert len(cases) > 400
    with httpx.Client(base_url=url, headers={**AUTH, "content-type": "application/json"}, timeout=60) as client:
        for route, field, body in cases:
            response = client.post(route, content=body.encode("utf-8", "surrogatepass"))
            assert response.status_code < 500, (route, field, body[:80], response.text[:200])
            if response.status_code >= 400:
                error = response.json()["error"]
                assert error["message"] and error["param"] in (None, field, "scheduler", "size"), (field, error)


def test_one_failing_request_does_not_fail_its_batch(exported_tiny, monkeypatch):
    pipeline = Pipeline.load(exported_tiny("standard"))
    original = pipeline.tokenizer.tokenize

    def tokenize(text):
        if "poison" in text:
            raise RuntimeError("a defect in preparing this prompt")
        return original(text)

    monkeypatch.setattr(pipeline.tokenizer, "tokenize", tokenize)
    app = create_app(pipeline, ServeSettings(batch_window_s=0.5, max_batch_images=4))
    results = {}
    with live_server(app) as base:

        def send(prompt):
            results[prompt] = httpx.post(
                f"{base}/v1/images/generations", json={"prompt": prompt, "steps": 2}, timeout=60
            )

        threads = [threading.Thread(target=send, args=(p,)) for p in ("a cat", "poison apple", "a dog")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        metrics = httpx.get(f"{base}/metrics").text
    assert results["a cat"].status_code == 200 and results["a dog"].status_code == 200
    assert results["poison apple"].status_code == 500
    assert results["poison apple"].json()["error"]["message"] == "the generation failed: RuntimeError"
    assert "sdrt_batched_requests_total 3" in metrics  # they did share a batch first


BAD_HTTP = [
    b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    b"NOT-HTTP\r\n\r\n",
]


def test_the_http_layers_own_errors_are_json(pipeline):
    import uvicorn

    app = create_app(pipeline, ServeSettings())
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="critical", lifespan="off", http=JsonErrorProtocol)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        pass
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        for request in BAD_HTTP:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
                connection.sendall(request)
                reply = b""
                while chunk := connection.recv(65536):
                    reply += chunk
            head, _, body = reply.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400"), reply
            assert b"application/json" in head and json.loads(body)["error"]["message"], reply
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.mark.slow
def test_metrics_labels_stay_bounded_across_a_storm_of_unknown_paths(url):
    rng = random.Random(0)
    with httpx.Client(base_url=url, timeout=30) as client:
        for index in range(3000):
            path = "/p" + "".join(rng.choice("abcdefxyz/%") for _ in range(rng.randint(1, 40))) + str(index)
            client.get(path, headers=AUTH if index % 2 else {})
        metrics = client.get("/metrics", headers=AUTH).text
    routes = {
        line.split('route="')[1].split('"')[0]
        for line in metrics.splitlines()
        if line.startswith("sdrt_requests_total{")
    }
    assert routes <= {
        "unmatched",
        "/metrics",
        "/health",
        "/v1/images/generations",
        "/sdapi/v1/txt2img",
        "/sdapi/v1/img2img",
    }, routes
    assert len(metrics) < 20_000


def test_auth_docs_and_openapi(url):
    for header in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {KEY}x"},
        {"Authorization": f"bearer {KEY}"},
        {"Authorization": "Bearer \xe9".encode("latin-1")},
    ):
        assert httpx.get(f"{url}/metrics", headers=header).status_code == 401
    for path in ("/openapi.json", "/docs"):  # on by default (--no-docs), behind the same auth
        assert httpx.get(f"{url}{path}").status_code == 401
        assert httpx.get(f"{url}{path}", headers=AUTH).status_code == 200
    response = httpx.get(f"{url}/redoc", headers=AUTH)
    assert response.status_code == 404 and response.json()["error"]
