"""ASGI middleware: the bearer-token check and request counts (Guard), and the body size limit
(BodyLimit). Plain ASGI, so client disconnects still reach the endpoints."""

from __future__ import annotations

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
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware, outermost: the bearer-token check (all routes but /health) and the
    request count by route and status. Plain ASGI, so disconnects reach the endpoints."""

    def __init__(self, app, service: "Service", api_key: str | None, routes: list):
        self.app, self.service, self.api_key, self.routes = app, service, api_key, routes
        self.expected = f"Bearer {api_key}".encode() if api_key else b""

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
        if self.api_key and route not in OPEN_ROUTES:
            headers = dict(scope.get("headers", []))
            if not hmac.compare_digest(headers.get(b"authorization", b""), self.expected):  # constant time
                self.service.metrics.count_request(self.label(scope), 401)
                await send_json(send, 401, error_body("a valid bearer token is required", None,
                                                      "authentication_error"))
                return
        status = 500

        async def counting_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # Which process answered: with several replicas, where a request went.
                message = {**message, "headers": [*message.get("headers", []), (b"x-sdrt-process", str(os.getpid()).encode())]}
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.service.metrics.count_request(self.label(scope), status)


class BodyLimit:
    """ASGI middleware: reads the body up to `limit` bytes (whether or not Content-Length is
    sent) and answers 413 itself past that; otherwise replays it to the app. Later receives
    (disconnect checks) go to the real channel."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        buffered, size = [], 0
        while True:
            message = await receive()
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
