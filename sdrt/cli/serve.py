"""`sdrt serve`, in one process or as a Ray Serve deployment."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from sdrt.cli import main
from sdrt.cli.controlnet_options import controlnet_dir_option
from sdrt.cli.default_model import resolve_model
from sdrt.cli.prompt_options import embedding_options, embedding_sources, serve_lora_options
from sdrt.cli.serve_ray import parse_api_auth, serve_on_ray
from sdrt.cli.types import PORT, THREADS, FiniteFloat
from sdrt.errors import SdrtError
from sdrt.runtime.engines import BACKEND_NAMES, DEFAULT_BACKEND

MIB = 2**20
#: The line `sdrt serve` ends with on Ctrl-C / SIGTERM, after uvicorn's graceful shutdown.
SERVE_STOPPED = "sdrt serve: stopped by a signal"


@main.command()
@click.option(
    "--model",
    "model_dir",
    default=None,
    type=click.Path(),
    help="An export folder, or a diffusers folder, checkpoint or hub id (exported once into the cache) "
    "[default: $SDRT_MODEL, else SD 1.5 from the hub].",
)
@click.option(
    "--refiner",
    default=None,
    type=click.Path(),
    help="SDXL refiner folder; A1111 requests pick it with refiner_checkpoint.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", default=7860, show_default=True, type=PORT)
@click.option("--backend", default=DEFAULT_BACKEND, show_default=True, type=click.Choice(BACKEND_NAMES))
@click.option("--threads", default=None, type=THREADS, help="CPU threads per engine (default: all cores).")
@click.option(
    "--api-key",
    default=None,
    envvar="SDRT_API_KEY",
    help="Require 'Authorization: Bearer KEY' on every route but /health (or $SDRT_API_KEY).",
)
@click.option(
    "--api-auth",
    default=None,
    envvar="SDRT_API_AUTH",
    metavar="USER:PASS[,USER:PASS]",
    help="A1111's --api-auth: also accept HTTP basic with these credentials (or $SDRT_API_AUTH).",
)
@click.option(
    "--styles",
    "styles_file",
    default=None,
    type=click.Path(dir_okay=False, exists=True),
    help="A1111's styles.csv (name, prompt, negative_prompt): the styles requests may name.",
)
@click.option(
    "--models-dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Exported models A1111's sd_model_checkpoint (and OpenAI's model) may switch to.",
)
@click.option("--max-queue", default=16, show_default=True, type=int, help="Requests admitted; more get 503.")
@click.option("--concurrency", default=1, show_default=True, type=int, help="Generations at once.")
@click.option(
    "--timeout", default=300.0, show_default=True, type=FiniteFloat(0, low_open=True), help="Seconds per request."
)
@click.option(
    "--max-images",
    default=4,
    show_default=True,
    type=click.IntRange(min=1),
    help="Images one request may ask for (A1111: batch_size x n_iter; OpenAI: n; extra-batch-images: images).",
)
@click.option(
    "--max-steps", default=150, show_default=True, type=click.IntRange(min=1), help="Steps one request may ask for."
)
@click.option(
    "--max-body-mb",
    default=20,
    show_default=True,
    type=click.IntRange(min=1),
    help="Largest request body in MiB (base64 images included); larger bodies get 413.",
)
@click.option(
    "--header-timeout",
    default=20.0,
    show_default=True,
    type=FiniteFloat(0, low_open=True),
    metavar="SECONDS",
    help="A request's line and headers must arrive within this; a slower connection is closed.",
)
@click.option(
    "--body-timeout",
    default=120.0,
    show_default=True,
    type=FiniteFloat(0, low_open=True),
    metavar="SECONDS",
    help="A request's body must arrive within this once its headers are in; else 408.",
)
@click.option(
    "--max-connections",
    default=None,
    type=click.IntRange(min=1),
    metavar="N",
    help="Connections open at once; more are answered 503 [default: half the open-file limit, at most 1000].",
)
@click.option("--no-docs", is_flag=True, help="Serve no OpenAPI page at /docs (nor /openapi.json).")
@click.option(
    "--comfy-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="The ComfyUI routes' input/output/temp folders [default: the sdrt cache's comfy/].",
)
@click.option(
    "--max-batch",
    default=4,
    show_default=True,
    type=int,
    help="Images that compatible waiting requests may share one UNet call with (1: no batching).",
)
@click.option(
    "--batch-window-ms",
    default=0.0,
    show_default=True,
    type=FiniteFloat(0),
    help="How long a free worker waits for compatible requests to join a batch.",
)
@click.option(
    "--plain-prompts",
    is_flag=True,
    help="The OpenAI route reads prompts as plain text (A1111 routes always read A1111's prompt language).",
)
@click.option(
    "--randn-source",
    default="GPU",
    show_default=True,
    type=click.Choice(["CPU", "GPU", "NV"]),
    help="A1111's randn_source to start with: A1111's default GPU (torch's CUDA Philox generator as A1111's "
    "NV source emulates it; unverified on a GPU), NV, or CPU (torch's CPU generator, diffusers' noise).",
)
@click.option(
    "--preview-every",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    metavar="N",
    help="Decode a preview every N steps for A1111's /sdapi/v1/progress current_image (tiny VAE when "
    "exported; 0: none).",
)
@click.option(
    "--url-ttl",
    default=3600.0,
    show_default=True,
    type=FiniteFloat(0, low_open=True),
    metavar="SECONDS",
    help="How long the images of OpenAI response_format=url answers stay at their URL.",
)
@click.option(
    "--url-images",
    default=64,
    show_default=True,
    type=click.IntRange(min=1),
    metavar="N",
    help="response_format=url images kept at once (in memory); the oldest go first.",
)
@embedding_options
@serve_lora_options
@controlnet_dir_option
@click.option("--ray", "use_ray", is_flag=True, help="Run as a Ray Serve deployment (pip install 'sdrt[ray]').")
@click.option("--replicas", default=None, type=int, help="With --ray: a fixed number of replicas.")
@click.option("--min-replicas", default=1, show_default=True, type=int, help="With --ray: autoscaling lower bound.")
@click.option("--max-replicas", default=1, show_default=True, type=int, help="With --ray: autoscaling upper bound.")
@click.option(
    "--gpus-per-replica",
    default=0.0,
    show_default=True,
    type=FiniteFloat(0),
    help="With --ray: GPUs each replica reserves (1 = one replica per GPU).",
)
@click.option(
    "--cpus-per-replica",
    default=1.0,
    show_default=True,
    type=FiniteFloat(0, low_open=True),
    help="With --ray: CPUs each replica reserves (and its engine threads unless --threads).",
)
@click.option(
    "--ray-address",
    default=None,
    help="With --ray: the cluster to join ('auto' for the one this machine belongs to); "
    "default: start a local Ray instance.",
)
def serve(
    model_dir,
    refiner,
    host,
    port,
    backend,
    threads,
    api_key,
    api_auth,
    styles_file,
    models_dir,
    max_queue,
    concurrency,
    timeout,
    max_images,
    max_steps,
    max_body_mb,
    header_timeout,
    body_timeout,
    max_connections,
    no_docs,
    comfy_dir,
    max_batch,
    batch_window_ms,
    plain_prompts,
    preview_every,
    randn_source,
    url_ttl,
    url_images,
    embedding_dirs,
    embedding_files,
    lora_dir,
    lora_cache_mb,
    controlnet_dir,
    use_ray,
    replicas,
    min_replicas,
    max_replicas,
    gpus_per_replica,
    cpus_per_replica,
    ray_address,
) -> None:
    """Serve the model over HTTP: OpenAI Images API, AUTOMATIC1111 API, ComfyUI API, /health, /metrics."""
    try:
        from sdrt.serve.app import ServeSettings, create_app
        from sdrt.serve.http import StoppingServer, server_config
    except ImportError as error:
        raise SdrtError(f"serve needs the serve extra ({error.name} is missing): pip install 'sdrt[serve]'") from error
    from sdrt.runtime.pipeline import Pipeline

    if max_queue < 1 or concurrency < 1 or timeout <= 0 or max_batch < 1 or batch_window_ms < 0:
        raise SdrtError(
            "--max-queue, --concurrency and --max-batch must be >= 1, --timeout > 0 and --batch-window-ms >= 0"
        )
    settings = ServeSettings(
        max_queue=max_queue,
        concurrency=concurrency,
        timeout_s=timeout,
        max_images=max_images,
        max_steps=max_steps,
        max_body_bytes=max_body_mb * MIB,
        header_timeout_s=header_timeout,
        body_timeout_s=body_timeout,
        max_connections=max_connections,
        docs=not no_docs,
        comfy_dir=comfy_dir,
        api_key=api_key,
        api_auth=parse_api_auth(api_auth),
        styles_file=styles_file,
        max_batch_images=max_batch,
        batch_window_s=batch_window_ms / 1000,
        plain_prompts=plain_prompts,
        preview_every=preview_every,
        randn_source=randn_source,
        image_url_ttl_s=url_ttl,
        max_url_images=url_images,
    )
    if host not in ("127.0.0.1", "localhost", "::1") and not (api_key or api_auth):
        click.echo(f"warning: serving on {host} without --api-key: anyone who can reach it can use it", err=True)
    embeddings = embedding_sources(embedding_dirs, embedding_files)
    model_dir = resolve_model(model_dir)
    if use_ray and models_dir is not None:
        raise SdrtError("--models-dir is not supported with --ray yet: each replica serves one model")
    if use_ray:
        serve_on_ray(
            model_dir,
            refiner,
            backend,
            threads,
            settings,
            host,
            port,
            ray_address,
            dict(
                replicas=replicas,
                min_replicas=min_replicas,
                max_replicas=max_replicas,
                gpus_per_replica=gpus_per_replica,
                cpus_per_replica=cpus_per_replica,
            ),
            embeddings,
            dict(lora_dir=lora_dir, lora_cache_mb=lora_cache_mb, controlnet_dir=controlnet_dir),
        )
        return
    if models_dir is not None and not Path(models_dir).is_dir():
        raise SdrtError(f"--models-dir {models_dir} is not a folder")

    def load(folder):
        pipeline = Pipeline.load(
            folder,
            backend=backend,
            threads=threads,
            refiner=refiner,
            embeddings=embeddings,
            lora_dir=lora_dir,
            lora_cache_mb=lora_cache_mb,
            controlnet_dir=controlnet_dir,
        )
        for name, reason in pipeline.text_encoders.embeddings.skipped.items():
            click.echo(f"warning: embedding {name} skipped: {reason}", err=True)
        return pipeline

    from sdrt.serve.catalog import ModelCatalog

    app = create_app(load(model_dir), settings, ModelCatalog(Path(model_dir), models_dir, load))
    config = server_config(app, settings, host, port, log_level="info")
    from sdrt.cli.signals import SIGNAL_EXIT_CODE, Interrupted

    try:
        StoppingServer(config, app.state.service).run()
    except Interrupted:  # uvicorn shut down gracefully, then passed the signal on
        click.echo(SERVE_STOPPED, err=True)
        sys.exit(SIGNAL_EXIT_CODE)
