"""`sdrt serve`'s helpers: A1111's --api-auth pairs, and the Ray Serve deployment (--ray)."""

from __future__ import annotations

import signal
import time

import click

from sdrt.errors import SdrtError


def parse_api_auth(text: str | None) -> tuple[tuple[str, str], ...]:
    """A1111's --api-auth "user:pass,user2:pass2"."""
    if not text:
        return ()
    pairs = []
    for item in text.split(","):
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:
            raise SdrtError("--api-auth must be USER:PASSWORD pairs separated by commas")
        pairs.append((user, password))
    return tuple(pairs)


def serve_on_ray(
    model_dir,
    refiner,
    backend,
    threads,
    settings,
    host,
    port,
    address,
    replica_options: dict,
    embeddings: list[str] = (),
    loras: dict | None = None,
) -> None:
    try:
        from sdrt.serve import ray_serve
    except ImportError as error:
        raise SdrtError(f"--ray needs Ray Serve ({error.name} is missing): pip install 'sdrt[ray]'") from error
    ray_settings = ray_serve.RaySettings(**replica_options)
    ray_settings.check()
    ray_serve.run(
        model_dir, backend, threads, settings, ray_settings, host, port, address, refiner, tuple(embeddings), loras
    )
    click.echo(f"serving on http://{host}:{port} with Ray Serve; Ctrl-C (or SIGTERM) stops it", err=True)

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # what service managers and containers send
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        ray_serve.shutdown()
