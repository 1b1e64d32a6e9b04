"""ASGI middleware: the bearer-token check and request counts (Guard), and the body size limit
(BodyLimit). Plain ASGI, so client disconnects still reach the endpoints."""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import os
from typing import TYPE_CHECKING

from starlette.routing import Match

from sdrt.serve.schemas import OPEN_ROUTES, error_body

UNMATCHED = "unmatched"  # the metrics label of every path no route serves

if TYPE_CHECKING:
    from sdrt.serve.service import Service


async def send_json(send, status: int, payload: dict, headers: list | None = None) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware, outermost: the credentials check (all routes but /health) and the
    request count by route and status. Plain ASGI, so disconnects reach the endpoints. With an
    API key and/or A1111's --api-auth pairs, a request needs `Authorization: Bearer KEY` or
    HTTP basic with one of the pairs (what webuiapi's set_auth sends)."""

    def __init__(
        self, app, service: Service, api_key: str | None, routes: list, api_auth: tuple[tuple[str, str], ...] = ()
    ):
        self.app, self.service, self.api_key, self.routes = app, service, api_key, routes
        self.accepted = [f"Bearer {api_key}".encode()] if api_key else []
        self.accepted += [b"Basic " + base64.b64encode(f"{user}:{password}".encode()) for user, password in api_auth]
        self.challenge = [(b"www-authenticate", b'Basic realm="sdrt"')] if api_auth else []

    def authorized(self, scope) -> bool:
        given = dict(scope.get("headers", [])).get(b"authorization", b"")
        # Every candidate is compared (constant time each), so timing says nothing of which matched.
        return sum(hmac.compare_digest(given, expected) for expected in self.accepted) > 0

    def label(self, scope) -> str:
        """The route template a request matches (the metrics label): a bounded set of values,
        whatever paths clients send; UNMATCHED for any other path."""
        for route in self.routes:
            if getattr(route, "path", None) is not None and route.matches(scope)[0] != Match.NONE:
                return route.path
        return UNMATCHED

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"]
        if self.accepted and route not in OPEN_ROUTES and not self.authorized(scope):
            self.service.metrics.count_request(self.label(scope), 401)
            what = "a valid bearer token" if not self.challenge else "valid credentials (HTTP basic or bearer token)"
            await send_json(send, 401, error_body(f"{what} is required", None, "authentication_error"), self.challenge)
            return
        status = 500

        async def counting_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # Which process answered: with several replicas, where a request went.
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"x-sdrt-process", str(os.getpid()).encode())],
                }
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.service.metrics.count_request(self.label(scope), status)


class BodyLimit:
    """ASGI middleware: reads the body up to `limit` bytes (whether or not Content-Length is
    sent) and answers 413 itself past that, or 408 (closing the connection) when the whole body
    has not arrived `timeout_s` after the headers (a client trickling it holds nothing for long);
    otherwise replays it to the app. Later receives (disconnect checks) go to the real channel."""

    def __init__(self, app, limit: int, timeout_s: float | None = None):
        self.app, self.limit, self.timeout_s = app, limit, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        buffered, size = [], 0
        deadline = None if self.timeout_s is None else asyncio.get_running_loop().time() + self.timeout_s
        while True:
            try:
                left = None if deadline is None else max(deadline - asyncio.get_running_loop().time(), 0)
                message = await asyncio.wait_for(receive(), left)
            except TimeoutError:
                late = f"the body did not arrive within {self.timeout_s:g} s of the headers"
                await send_json(send, 408, error_body(late, None), [(b"connection", b"close")])
                return
            buffered.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.limit:
                await send_json(send, 413, error_body(f"the body is larger than {self.limit} bytes", None))
                return
            if not message.get("more_body", False):
                break

        async def replay():
            return buffered.pop(0) if buffered else await receive()

        await self.app(scope, replay, send)
