"""The HTTP layer: uvicorn answers a request it cannot parse (a bad Content-Length, a malformed
request line or header) itself, before the app sees it, with a plain-text 400.
`JsonErrorProtocol` is uvicorn's h11 protocol with that answer in the same JSON error shape as
every other sdrt error, and two bounds uvicorn lacks: a request's line and headers must arrive
within `header_timeout_s` (a connection trickling them is closed), and at most `max_connections`
connections are open at once (one more is answered 503 and closed at once, so descriptors never
run out). The body's own time limit is sdrt.serve.middleware.BodyLimit's."""

from __future__ import annotations

import json
import resource

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from sdrt.serve.schemas import error_body

BAD_REQUEST = 400
SERVICE_UNAVAILABLE = b"503 Service Unavailable"
#: `--max-connections`' default: half the process's open-file limit (the rest for model files,
#: engines and threads), at most this many.
DEFAULT_MAX_CONNECTIONS = 1000


def default_max_connections() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return DEFAULT_MAX_CONNECTIONS
    return max(1, min(DEFAULT_MAX_CONNECTIONS, soft // 2))


class JsonErrorProtocol(H11Protocol):
    header_timeout_s: float | None = None  # set by protocol_class
    max_connections: int | None = None
    _header_timer = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if self.max_connections is not None and len(self.connections) > self.max_connections:
            body = json.dumps(
                error_body(f"the server has {self.max_connections} connections open; retry later", None, "server_busy")
            ).encode()
            head = (
                b"HTTP/1.1 " + SERVICE_UNAVAILABLE + b"\r\ncontent-type: application/json\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n"
            )
            transport.write(head + body)
            transport.close()
            return
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        if self.header_timeout_s is not None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timed_out)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        """No whole request line and headers within the limit (and none being served): close."""
        self._header_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            return  # its headers came in time; the body's limit is BodyLimit's
        if not self.transport.is_closing():
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_timer()  # the next request on this connection has the same limit

    def connection_lost(self, exc) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        body = json.dumps(error_body(f"the HTTP request is malformed: {msg}", None)).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (h11.Response(status_code=BAD_REQUEST, headers=headers), h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()


def protocol_class(header_timeout_s: float | None, max_connections: int | None) -> type[JsonErrorProtocol]:
    """JsonErrorProtocol with these bounds (uvicorn makes one protocol object per connection)."""
    return type(
        "BoundedJsonErrorProtocol",
        (JsonErrorProtocol,),
        {"header_timeout_s": header_timeout_s, "max_connections": max_connections},
    )


def server_config(app, settings, host: str, port: int, **options) -> uvicorn.Config:
    """uvicorn's config for `sdrt serve`: the settings' header timeout and connection limit."""
    http = protocol_class(settings.header_timeout_s, settings.max_connections or default_max_connections())
    return uvicorn.Config(app, host=host, port=port, http=http, **options)


class StoppingServer(uvicorn.Server):
    """uvicorn's server that, on Ctrl-C or SIGTERM, first stops the running generations at their
    next step and drops the waiting ones (uvicorn alone would wait for them to finish)."""

    def __init__(self, config: uvicorn.Config, service):
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig, frame) -> None:
        self.service.shutdown()
        super().handle_exit(sig, frame)
