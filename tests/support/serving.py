"""The live test server and PNG helpers shared by the serve tests (and the feature tests that
drive a server): uvicorn in a thread, base64 PNGs, and a pipeline stand-in that holds a run."""

from __future__ import annotations

import base64
import contextlib
import io
import threading
import time

import uvicorn
from PIL import Image

from sdrt.runtime.pipeline import GenerationCancelled, Pipeline


@contextlib.contextmanager
def live_server(app, settings=None):
    """uvicorn on 127.0.0.1 with a free port, in a thread; yields the base URL. With `settings`
    (ServeSettings), uvicorn is configured as `sdrt serve` configures it (sdrt.serve.http)."""
    if settings is None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    else:
        from sdrt.serve.http import server_config

        config = server_config(app, settings, "127.0.0.1", 0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def decode_png(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


class SlowPipeline:
    """Stands in for the pipeline to exercise queueing: each run lasts until `release` is set,
    or until the service sets its cancel token."""

    def __init__(self, real: Pipeline):
        self.folder, self.manifest, self.backend = real.folder, real.manifest, real.backend
        self.release = threading.Event()
        self.started = threading.Semaphore(0)
        self.cancelled = 0
        self.real = real

    def run(self, request, progress=None, cancel=None, preview=None):
        self.started.release()
        while not self.release.wait(0.01):
            if cancel is not None and cancel.is_set():
                self.cancelled += 1
                raise GenerationCancelled("cancelled")
        return self.real.generate("a cat", steps=1, seed=0)
