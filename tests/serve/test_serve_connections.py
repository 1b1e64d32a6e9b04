"""The HTTP layer's bounds (issue 38), with raw sockets against a real uvicorn configured as
`sdrt serve` configures it: a request's headers and body must arrive in time, and a flood of
unfinished connections is refused past --max-connections, so /health stays reachable."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from sdrt.cli import main
from sdrt.runtime.pipeline import Pipeline
from sdrt.serve.app import ServeSettings, create_app
from support.serving import live_server

HEADER_TIMEOUT_S, BODY_TIMEOUT_S, MAX_CONNECTIONS = 1.0, 1.0, 8
#: How long past a timeout a connection may stay open (a loaded 2-core machine is slow to act).
SLACK_S = 4.0
TRICKLE_S = 0.2


@pytest.fixture(scope="module")
def url(exported_tiny):
    settings = ServeSettings(
        header_timeout_s=HEADER_TIMEOUT_S, body_timeout_s=BODY_TIMEOUT_S, max_connections=MAX_CONNECTIONS
    )
    with live_server(create_app(Pipeline.load(exported_tiny("standard")), settings), settings) as base:
        yield base


def connect(url: str) -> socket.socket:
    host, port = url.rsplit("//", 1)[1].split(":")
    sock = socket.create_connection((host, int(port)), timeout=SLACK_S)
    sock.settimeout(TRICKLE_S)
    return sock


def trickle_until_closed(sock: socket.socket, byte: bytes, limit_s: float) -> tuple[float, bytes]:
    """Sends `byte` every TRICKLE_S until the server closes; (seconds it took, what it answered)."""
    started, answer = time.monotonic(), b""
    while time.monotonic() - started < limit_s:
        try:
            sock.sendall(byte)
        except OSError:  # reset: closed
            break
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break
        if not data:
            break
        answer += data
    return time.monotonic() - started, answer


def test_a_connection_trickling_its_headers_is_closed(url):
    with connect(url) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        took, answer = trickle_until_closed(sock, b"X", HEADER_TIMEOUT_S + SLACK_S)
    assert took < HEADER_TIMEOUT_S + SLACK_S and answer == b""


def test_a_body_trickling_in_gets_408(url):
    with connect(url) as sock:
        sock.sendall(b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        sock.sendall(b"Content-Length: 1000\r\n\r\n{")
        took, answer = trickle_until_closed(sock, b" ", BODY_TIMEOUT_S + SLACK_S)
    assert took < BODY_TIMEOUT_S + SLACK_S
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    assert "did not arrive" in json.loads(body)["error"]["message"]


def test_unfinished_connections_past_the_limit_are_refused_and_health_stays_reachable(url):
    held = [connect(url) for _ in range(MAX_CONNECTIONS + 4)]
    try:
        for sock in held:
            sock.sendall(b"GET /health HTTP/1.1\r\n")  # never finished
        refused = 0
        for sock in held:
            try:
                refused += sock.recv(65536).startswith(b"HTTP/1.1 503")
            except TimeoutError:
                pass
        assert refused >= len(held) - MAX_CONNECTIONS  # over the limit: 503 and closed at once
        started = time.monotonic()
        while True:  # the held ones are closed by the header timeout; /health answers again
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() - started < HEADER_TIMEOUT_S + SLACK_S
            time.sleep(TRICKLE_S)
    finally:
        for sock in held:
            sock.close()


def test_serve_flags_set_the_bounds(exported_tiny, monkeypatch):
    from sdrt.serve.http import StoppingServer

    seen = {}
    monkeypatch.setattr(StoppingServer, "run", lambda self: seen.setdefault("server", self))
    flags = ["--header-timeout", "0.5", "--body-timeout", "0.7", "--max-connections", "7"]
    result = CliRunner().invoke(main, ["serve", "--model", str(exported_tiny("standard")), *flags])
    assert result.exit_code == 0, result.output
    server = seen["server"]
    assert (server.config.http.header_timeout_s, server.config.http.max_connections) == (0.5, 7)
    assert server.service.settings.body_timeout_s == 0.7
    refused = CliRunner().invoke(main, ["serve", "--model", str(exported_tiny("standard")), "--header-timeout", "0"])
    assert refused.exit_code == 2 and "--header-timeout" in refused.output


def test_the_bounds_defaults_are_the_documented_ones():
    from sdrt.cli.serve import serve
    from sdrt.serve.http import DEFAULT_MAX_CONNECTIONS

    defaults = {option.name: option.default for option in serve.params}
    assert defaults["header_timeout"] == ServeSettings.header_timeout_s
    assert defaults["body_timeout"] == ServeSettings.body_timeout_s
    text = (Path(__file__).parents[2] / "docs" / "serve.md").read_text()
    assert f"| `--header-timeout S` | {ServeSettings.header_timeout_s:g} |" in text
    assert f"| `--body-timeout S` | {ServeSettings.body_timeout_s:g} |" in text
    assert f"| `--max-connections N` | half the open-file limit, at most {DEFAULT_MAX_CONNECTIONS} |" in text
