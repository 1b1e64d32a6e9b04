"""The HTTP layer's own errors as JSON: uvicorn answers a request it cannot parse (a bad
Content-Length, a malformed request line or header) itself, before the app sees it, with a
plain-text 400. `JsonErrorProtocol` is uvicorn's h11 protocol with that answer in the same JSON
error shape as every other sdrt error."""

from __future__ import annotations

import json

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from sdrt.serve.schemas import error_body

BAD_REQUEST = 400


class JsonErrorProtocol(H11Protocol):
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


class StoppingServer(uvicorn.Server):
    """uvicorn's server that, on Ctrl-C or SIGTERM, first stops the running generations at their
    next step and drops the waiting ones (uvicorn alone would wait for them to finish)."""

    def __init__(self, config: uvicorn.Config, service):
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig, frame) -> None:
        self.service.shutdown()
        super().handle_exit(sig, frame)
