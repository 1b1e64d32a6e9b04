"""`sdrt serve --ray`: the app as a Ray Serve deployment on a local Ray instance with two CPU
replicas, under concurrent clients. Each response equals the single-process pipeline's."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from sdrt.errors import SdrtError
from sdrt.runtime.pipeline import Pipeline
from sdrt.serve.app import ServeSettings
from support.serving import decode_png

ray = pytest.importorskip("ray", reason="needs Ray Serve: pip install 'sdrt[ray]'")
ray_serve = pytest.importorskip("sdrt.serve.ray_serve")

REPLICAS = 2
CLIENTS = 4
REQUESTS = 12


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_url(exported_tiny):
    folder = exported_tiny("standard")
    ray.init(num_cpus=REPLICAS, include_dashboard=False, log_to_driver=False)
    port = free_port()
    try:
        ray_serve.run(folder, "cpu", None, ServeSettings(), ray_serve.RaySettings(replicas=REPLICAS), "127.0.0.1", port)
        yield f"http://127.0.0.1:{port}", folder
    finally:
        ray_serve.shutdown()


def test_two_replicas_serve_concurrent_clients_with_the_same_images(ray_url):
    url, folder = ray_url
    payloads = [
        {"prompt": f"a photo of cat number {index}", "seed": index, "steps": 2, "size": "64x64"}
        for index in range(REQUESTS)
    ]
    with httpx.Client(timeout=120) as client, ThreadPoolExecutor(CLIENTS) as pool:
        responses = list(pool.map(lambda payload: client.post(f"{url}/v1/images/generations", json=payload), payloads))
    assert [response.status_code for response in responses] == [200] * REQUESTS
    processes = {response.headers["x-sdrt-process"] for response in responses}
    assert len(processes) == REPLICAS, "concurrent requests should reach both replicas"
    local = Pipeline.load(folder)
    for payload, response in zip(payloads, responses):
        expected = local.generate(payload["prompt"], seed=payload["seed"], steps=2, height=64, width=64).images[0]
        got = np.asarray(decode_png(response.json()["data"][0]["b64_json"]), dtype=np.int16)
        assert np.abs(got - np.asarray(expected, dtype=np.int16)).max() <= 1


def test_errors_pass_through_ray_unchanged(ray_url):
    url, _ = ray_url
    response = httpx.post(f"{url}/v1/images/generations", json={"prompt": "a cat", "size": "65x64"}, timeout=60)
    assert response.status_code == 400 and response.json()["error"]["param"] == "width"


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(replicas=0), "--replicas must be at least 1"),
        (dict(min_replicas=3, max_replicas=2), "replica bounds"),
        (dict(gpus_per_replica=-1), "--gpus-per-replica"),
    ],
)
def test_bad_replica_settings_are_clear_errors(settings, message):
    with pytest.raises(SdrtError, match=message):
        ray_serve.RaySettings(**settings).check()


def test_cli_refuses_bad_ray_settings_in_one_line(tmp_path):
    from click.testing import CliRunner

    from sdrt.cli import main

    (tmp_path / "manifest.json").write_text("{}")  # an export, as far as --model's check looks
    result = CliRunner().invoke(main, ["serve", "--model", str(tmp_path), "--ray", "--replicas", "0"])
    assert result.exit_code == 2 and result.output.strip().endswith("--replicas must be at least 1")
    assert "Traceback" not in result.output
