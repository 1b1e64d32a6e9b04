"""`sdrt serve --ray`: the same app as a Ray Serve deployment, one loaded pipeline per replica.

Each replica is a Ray actor that loads the model once and serves `create_app`'s routes, so the
API, limits, batching and errors are the same as one process; Ray's HTTP proxy spreads requests
over the replicas (it prefers the less busy of two), and Ray's autoscaler adds or removes
replicas between the bounds by how many requests each has in flight. With
`gpus_per_replica=1`, Ray gives each replica its own GPU (CUDA_VISIBLE_DEVICES), so one
replica per GPU on a machine, and more machines by joining them to the Ray cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ray import serve

from sdrt.errors import SdrtError
from sdrt.runtime.text.embeddings import EmbeddingSource
from sdrt.serve.app import ServeSettings, create_app

DEPLOYMENT_NAME = "sdrt"
APP_NAME = "sdrt"


@dataclass(frozen=True)
class RaySettings:
    """Load-time settings of the deployment."""

    replicas: int | None = None  # a fixed count; None autoscales between min and max
    min_replicas: int = 1
    max_replicas: int = 1
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0
    target_ongoing_requests: float = 2.0  # per replica: above it, the autoscaler adds replicas

    def check(self) -> None:
        if self.replicas is not None and self.replicas < 1:
            raise SdrtError("--replicas must be at least 1")
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise SdrtError("replica bounds must satisfy 1 <= --min-replicas <= --max-replicas")
        if self.gpus_per_replica < 0 or self.cpus_per_replica <= 0:
            raise SdrtError("--gpus-per-replica must be >= 0 and --cpus-per-replica > 0")


@serve.ingress()
class SdrtReplica:
    """A replica: the pipeline loads in the actor, then Ray asks it for the ASGI app."""

    def __init__(
        self,
        model_dir: str,
        backend: str,
        threads: int | None,
        settings: ServeSettings,
        refiner: str | None = None,
        embeddings: tuple = (),
        loras: dict | None = None,
    ):
        from sdrt.runtime.pipeline import Pipeline

        self.pipeline = Pipeline.load(
            model_dir, backend=backend, threads=threads, refiner=refiner, embeddings=list(embeddings), **(loras or {})
        )
        self.settings = settings

    def __serve_build_asgi_app__(self):
        return create_app(self.pipeline, self.settings)


def build_application(
    model_dir: str | Path,
    backend: str,
    threads: int | None,
    settings: ServeSettings,
    ray_settings: RaySettings,
    refiner: str | Path | None = None,
    embeddings: tuple = (),
    loras: dict | None = None,
):
    """The bound Ray Serve application (pass it to `serve.run`); `embeddings` and `loras`
    (lora_dir, lora_cache_mb, controlnet_dir) as Pipeline.load takes them (absolute paths: replicas may run
    elsewhere)."""
    ray_settings.check()
    folders = [str(Path(folder).resolve()) for folder in (model_dir, refiner) if folder is not None]
    for folder in folders:
        if not Path(folder).is_dir():
            raise SdrtError(f"model folder {folder} does not exist (on a cluster it must exist on every node)")
    if threads is None:  # replicas sharing a machine must not each take every core
        threads = max(1, int(ray_settings.cpus_per_replica))
    options: dict = {
        "name": DEPLOYMENT_NAME,
        "ray_actor_options": {"num_cpus": ray_settings.cpus_per_replica, "num_gpus": ray_settings.gpus_per_replica},
        # Ray sends a replica at most this many requests; the replica's own queue answers 503
        # past max_queue, so Ray never holds more than that per replica.
        "max_ongoing_requests": settings.max_queue + 1,
    }
    if ray_settings.replicas is not None:
        options["num_replicas"] = ray_settings.replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": ray_settings.min_replicas,
            "max_replicas": ray_settings.max_replicas,
            "target_ongoing_requests": ray_settings.target_ongoing_requests,
        }
    deployment = serve.deployment(**options)(SdrtReplica)
    sources = [EmbeddingSource.parse(str(e)) for e in embeddings]
    absolute = tuple(EmbeddingSource(source.path.resolve(), source.token) for source in sources)
    loras = dict(loras or {})
    for folder in ("lora_dir", "controlnet_dir"):  # replicas may start elsewhere: absolute paths
        if loras.get(folder) is not None:
            loras[folder] = str(Path(loras[folder]).resolve())
    return deployment.bind(
        folders[0], backend, threads, settings, folders[1] if refiner is not None else None, absolute, loras
    )


def run(
    model_dir: str | Path,
    backend: str,
    threads: int | None,
    settings: ServeSettings,
    ray_settings: RaySettings,
    host: str,
    port: int,
    address: str | None = None,
    refiner: str | Path | None = None,
    embeddings: tuple = (),
    loras: dict | None = None,
) -> None:
    """Connects to (or starts) Ray, starts Serve's HTTP proxy on host:port and deploys; returns
    once every replica is up. `address` "auto" joins the cluster this machine belongs to."""
    import ray

    application = build_application(model_dir, backend, threads, settings, ray_settings, refiner, embeddings, loras)
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(application, name=APP_NAME, route_prefix="/")


def shutdown() -> None:
    import ray

    serve.shutdown()
    ray.shutdown()
