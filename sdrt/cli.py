"""The `sdrt` command. Importing it loads no export code, so runtime commands start fast."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import click

from sdrt import __version__
from sdrt.errors import SdrtError
from sdrt.runtime.engine import BACKENDS
from sdrt.runtime.schedulers import SAMPLERS as SCHEDULERS

SCHEDULER_NAMES = tuple(SCHEDULERS)


class SdrtGroup(click.Group):
    """Turns sdrt's own errors into one line on stderr and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SdrtError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(error.exit_code)


@click.group(cls=SdrtGroup)
@click.version_option(__version__, prog_name="sdrt")
def main() -> None:
    """sdrt: Stable Diffusion inference on exported ONNX / TensorRT engines."""


@main.command()
@click.argument("prompts", nargs=-1, required=True)
@click.option(
    "--model",
    "model_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Model folder (with a tokenizer/ inside) or a tokenizer folder.",
)
@click.option("--json", "as_json", is_flag=True, help="Print ids, lengths and dropped text as JSON.")
def tokenize(prompts: tuple[str, ...], model_dir: str, as_json: bool) -> None:
    """Print the text encoder's input ids for each PROMPT."""
    from sdrt.runtime.tokenizer import ClipTokenizer

    tokenizer = ClipTokenizer.from_folder(model_dir)
    batch = tokenizer.encode(list(prompts))
    if as_json:
        rows = [
            {"prompt": p, "input_ids": ids.tolist(), "length": n, "dropped_text": d}
            for p, ids, n, d in zip(prompts, batch.input_ids, batch.lengths, batch.dropped_text)
        ]
        click.echo(json.dumps(rows, ensure_ascii=False))
        return
    for prompt, ids, length, dropped in zip(prompts, batch.input_ids, batch.lengths, batch.dropped_text):
        click.echo(" ".join(str(i) for i in ids[:length]))
        if dropped:
            click.echo(
                f"warning: the prompt is longer than {tokenizer.max_length - 2} tokens; "
                f"this part was dropped: {dropped!r}",
                err=True,
            )


@main.command()
@click.argument("model")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Output folder (default: engines/NAME, NAME from MODEL).")
@click.option("--config", "config_dir", default=None, type=click.Path(file_okay=False, exists=True),
              help="For a single-file checkpoint offline: a diffusers folder with matching configs.")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="UNet and text encoder precision (normalizations and softmax stay fp32).")
@click.option("--vae-precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="VAE precision: the fp16 SD VAE can overflow into NaN/black images.")
@click.option("--target", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Execution provider the graphs are made for.")
@click.option("--optimize", is_flag=True,
              help="Apply the target's graph optimizations (CUDA: fused attention, GroupNorm, GELU).")
@click.option("--overwrite", is_flag=True, help="Replace an existing export in --out.")
def export(model: str, out_dir: str | None, config_dir: str | None, precision: str, vae_precision: str,
           target: str, optimize: bool, overwrite: bool) -> None:
    """Export MODEL (diffusers folder, .safetensors/.ckpt checkpoint or hub id) to validated
    ONNX with a manifest.json, in the layout OnnxStableDiffusionPipeline reads."""
    from pathlib import Path

    try:
        from sdrt.export.exporter import ExportOptions, export_model
    except ImportError as error:
        raise SdrtError(f"export needs the export extra ({error.name} is missing): pip install 'sdrt[export]'")
    if out_dir is None:
        out_dir = str(Path("engines") / Path(model.rstrip("/")).stem.replace("/", "--"))
    options = ExportOptions(precision=precision, vae_precision=vae_precision, target=target, optimize=optimize)
    manifest = export_model(model, out_dir, config=config_dir, options=options, overwrite=overwrite,
                            progress=lambda line: click.echo(line, err=True))
    click.echo(f"exported {len(manifest.components)} components to {out_dir}")


def _check_writable(path: Path) -> None:
    folder = path.parent
    if not folder.is_dir():
        raise SdrtError(f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise SdrtError(f"cannot write {path}: folder {folder} is not writable")


def _output_paths(out: str | None, seed: int | None, count: int) -> list[Path]:
    base = Path(out) if out else Path(f"sdrt-{seed if seed is not None else 'image'}.png")
    if base.suffix.lower() != ".png":
        base = base.with_suffix(base.suffix + ".png") if base.suffix else base.with_suffix(".png")
    if count == 1:
        return [base]
    return [base.with_name(f"{base.stem}-{i}{base.suffix}") for i in range(1, count + 1)]


class _Progress:
    """One status line on stderr: step, total and steps per second (timed from the end of the
    first step, so load and warm-up do not count)."""

    BAR_WIDTH = 30

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.first_step_done: float | None = None

    def __call__(self, step: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.first_step_done is None:
            self.first_step_done = now
        elapsed = now - self.first_step_done
        rate = (step - 1) / elapsed if elapsed > 0 else 0.0
        done = "#" * (step * self.BAR_WIDTH // total)
        click.echo(f"\r[{done:<{self.BAR_WIDTH}}] {step}/{total} steps, {rate:.2f} it/s", err=True,
                   nl=step == total)


@main.command()
@click.argument("prompt")
@click.option("--model", "model_dir", required=True, type=click.Path(), help="Exported model folder.")
@click.option("--negative-prompt", default=None, help="What the image should not show.")
@click.option("--steps", default=50, show_default=True, type=int, help="Denoising steps.")
@click.option("--guidance", default=7.5, show_default=True, type=float, help="Classifier-free guidance scale.")
@click.option("--seed", default=None, type=int, help="Random seed (same image as diffusers with this seed).")
@click.option("--height", default=None, type=int, help="Image height (default: the model's native size).")
@click.option("--width", default=None, type=int, help="Image width (default: the model's native size).")
@click.option("--num-images", default=1, show_default=True, type=int, help="Images to generate.")
@click.option("--scheduler", default="lms", show_default=True, metavar="NAME",
              help=f"Sampler: {', '.join(SCHEDULER_NAMES)}.")
@click.option("--backend", default="cpu", show_default=True, type=click.Choice(BACKENDS),
              help="cpu or cuda (ONNX Runtime), or tensorrt (engines from `sdrt build`).")
@click.option("--threads", default=None, type=int, help="CPU threads per engine (default: all cores).")
@click.option("--cuda-graph", is_flag=True, help="With --backend cuda: capture the UNet as a CUDA graph per shape.")
@click.option("--init-image", default=None, help="Image-to-image: start from this image.")
@click.option("--mask", "mask_image", default=None,
              help="Inpainting: white (or opaque) = repaint, black = keep; needs --init-image.")
@click.option("--strength", default=None, type=float,
              help="How much to change the init image, in (0, 1] [default: 0.8, inpainting 1.0].")
@click.option("--out", default=None, help="Output PNG (default: sdrt-SEED.png; -N is added for several).")
@click.option("--quiet", is_flag=True, help="No progress bar or warnings.")
@click.option("--json", "as_json", is_flag=True, help="Print parameters, output paths and timings as JSON.")
def generate(prompt, model_dir, negative_prompt, steps, guidance, seed, height, width, num_images, scheduler,
             backend, threads, cuda_graph, init_image, mask_image, strength, out, quiet, as_json) -> None:
    """Generate images for PROMPT with an exported model (from --init-image: image-to-image;
    with --mask too: inpainting)."""
    started = time.perf_counter()
    from sdrt.runtime.pipeline import Pipeline
    from sdrt.runtime.png_info import format_parameters, save_png

    paths = _output_paths(out, seed, num_images)
    for path in paths:
        _check_writable(path)
    pipeline = Pipeline.load(model_dir, backend=backend, threads=threads, cuda_graph=cuda_graph,
                             progress=None if quiet else lambda line: click.echo(line, err=True))
    load_seconds = time.perf_counter() - started
    first_step: list[float] = []
    bar = _Progress(enabled=not quiet and not as_json)

    def progress(step: int, total: int) -> None:
        if not first_step:
            first_step.append(time.perf_counter() - started)
        bar(step, total)

    result = pipeline.generate(prompt, negative_prompt=negative_prompt, steps=steps, guidance_scale=guidance,
                               seed=seed, height=height, width=width, num_images=num_images,
                               scheduler=scheduler, progress=progress, init_image=init_image, strength=strength,
                               mask_image=mask_image)
    if seed is None and out is None:
        paths = _output_paths(out, result.parameters["seed"], num_images)
    if not quiet:
        for warning in result.warnings:
            click.echo(f"warning: {warning}", err=True)
    stage = time.perf_counter()
    for position, (image, path) in enumerate(zip(result.images, paths), start=1):
        save_png(image, path, format_parameters(prompt, result.parameters, position if len(paths) > 1 else None))
    timings = dict(result.timings, load=load_seconds, png=time.perf_counter() - stage,
                   start_to_first_step=first_step[0] if first_step else None)
    if as_json:
        click.echo(json.dumps({"parameters": result.parameters, "outputs": [str(p) for p in paths],
                               "timings": timings, "warnings": result.warnings}))
    elif not quiet:
        for path in paths:
            click.echo(str(path))


@main.command()
@click.argument("model_dir", type=click.Path())
@click.option("--static", "static_size", default=None, metavar="WxH",
              help="One fixed image size (fastest, and the UNet runs as a CUDA graph).")
@click.option("--min", "min_size", default=None, metavar="WxH", help="Smallest size [default: the export's].")
@click.option("--opt", "opt_size", default=None, metavar="WxH", help="Size to tune for [default: native].")
@click.option("--max", "max_size", default=None, metavar="WxH", help="Largest size [default: the export's].")
@click.option("--max-batch", default=4, show_default=True, type=int, help="Most images per call.")
@click.option("--precision", default="fp16", show_default=True, type=click.Choice(["fp16", "fp32"]),
              help="For fp32 exports (fp16 exports build as exported; the VAE stays fp32).")
@click.option("--workspace-gb", default=8.0, show_default=True, type=float, help="Builder scratch memory limit.")
@click.option("--force", is_flag=True, help="Rebuild even engines that are up to date.")
@click.option("--verify", "then_verify", is_flag=True,
              help="Then generate one image with TensorRT and on the CPU and compare them (sdrt verify).")
def build(model_dir, static_size, min_size, opt_size, max_size, max_batch, precision, workspace_gb, force,
          then_verify) -> None:
    """Build TensorRT engines for an exported MODEL_DIR (into MODEL_DIR/tensorrt/)."""
    from sdrt.runtime.manifest import Manifest
    from sdrt.runtime.engines.tensorrt.plan import BuildSettings, plan_profile
    from sdrt.runtime.sizes import parse_size

    manifest = Manifest.load(model_dir)
    sizes = {name: parse_size(value, f"--{name}") if value else None
             for name, value in (("static", static_size), ("min", min_size), ("opt", opt_size), ("max", max_size))}
    if workspace_gb <= 0:
        raise SdrtError("--workspace-gb must be positive")
    profile = plan_profile(manifest, static=sizes["static"], min_size=sizes["min"], opt_size=sizes["opt"],
                           max_size=sizes["max"], max_batch=max_batch)
    settings = BuildSettings(profile, precision, int(workspace_gb * 2**30))
    from sdrt.runtime.engines.tensorrt.build import build_engines

    started = time.perf_counter()
    plans = build_engines(model_dir, settings, progress=lambda line: click.echo(line, err=True), force=force)
    click.echo(f"{len(plans)} engines ready in {time.perf_counter() - started:.0f} s: "
               + ", ".join(str(path) for path in plans.values()))
    if then_verify:
        _verify(model_dir, "tensorrt", None)


@main.command()
@click.argument("model_dir", type=click.Path())
@click.option("--backend", required=True, type=click.Choice([b for b in BACKENDS if b != "cpu"]),
              help="The backend to check against the fp32 CPU path.")
@click.option("--steps", default=8, show_default=True, type=int)
@click.option("--json", "json_path", default=None, help="Also write the report here.")
def verify(model_dir, backend, steps, json_path) -> None:
    """Generate one image with BACKEND and on the CPU, and compare them (exit 1 if they differ
    by more than the documented tolerance, or the image has NaNs)."""
    _verify(model_dir, backend, json_path, steps)


def _verify(model_dir, backend, json_path, steps: int = 8) -> None:
    from sdrt.runtime.verify import verify as run_verify

    report = run_verify(model_dir, backend, steps=steps, progress=lambda line: click.echo(line, err=True))
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    click.echo(json.dumps(report))
    if not report["passed"]:
        click.echo(f"error: {backend} differs from the CPU path by {report['mean_abs'] * 255:.2f}/255 on average "
                   f"(tolerance {report['tolerance_mean_abs'] * 255:.1f}/255), finite: {report['finite']}", err=True)
        sys.exit(1)


@main.command()
@click.option("--model", "model_dir", default=None, type=click.Path(), help="Exported model folder.")
@click.option("--arch", default=None, help="Instead of --model: a random-weight model of a real architecture "
              "(sd15), built and exported once into ~/.cache/sdrt (or $SDRT_CACHE).")
@click.option("--backend", default="cpu", show_default=True, type=click.Choice(BACKENDS))
@click.option("--height", default=None, type=int, help="Image height (default: the model's native size).")
@click.option("--width", default=None, type=int, help="Image width (default: the model's native size).")
@click.option("--steps", default=10, show_default=True, type=int)
@click.option("--guidance", default=7.5, show_default=True, type=float)
@click.option("--num-images", default=1, show_default=True, type=int)
@click.option("--scheduler", default="lms", show_default=True, metavar="NAME")
@click.option("--runs", default=3, show_default=True, type=int, help="Measured runs (after the warm-up).")
@click.option("--warmup", default=1, show_default=True, type=int, help="Unmeasured runs first.")
@click.option("--threads", default=None, type=int, help="CPU threads (default: all cores).")
@click.option("--compare", default=None, type=click.Choice(["diffusers"]),
              help="Also run the same model in diffusers + torch, interleaved A B A B.")
@click.option("--diffusers-model", default=None, type=click.Path(),
              help="The diffusers folder the export came from (default: the manifest's source).")
@click.option("--sweep", default=None, help="Repeat over values: height=256,512 (also width, size, batch, steps).")
@click.option("--json", "json_path", default=None, type=click.Path(), help="Write the full report here.")
@click.option("--cuda-graph", is_flag=True, help="With --backend cuda: the UNet as a CUDA graph per shape.")
@click.option("--plot", "plot_path", default=None, type=click.Path(),
              help="With --sweep: a PNG plot here [default: beside --json] (needs matplotlib: sdrt[plot]).")
def bench(model_dir, arch, backend, height, width, steps, guidance, num_images, scheduler, runs, warmup, threads,
          compare, diffusers_model, sweep, json_path, cuda_graph, plot_path) -> None:
    """Measure latency per stage, memory and (with --compare) the ratio to diffusers."""
    from sdrt.benchmark import (BenchSettings, format_report, parse_sweep, run_benchmark, sweep_settings,
                                arch_model)
    from sdrt.runtime.manifest import Manifest

    def say(line: str) -> None:
        click.echo(line, err=True)

    if (model_dir is None) == (arch is None):
        raise SdrtError("pass exactly one of --model DIR or --arch NAME")
    if runs < 1 or warmup < 0:
        raise SdrtError("--runs must be >= 1 and --warmup >= 0")
    if scheduler not in SCHEDULER_NAMES:
        raise SdrtError(f"unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULER_NAMES)}")
    if arch is not None:
        model_dir, source = arch_model(arch, progress=say)
        diffusers_model = diffusers_model or source
    manifest = Manifest.load(model_dir)
    base = BenchSettings(height=height or manifest.native_height, width=width or manifest.native_width,
                         steps=steps, guidance=guidance, num_images=num_images, scheduler=scheduler)
    plan = [base]
    if sweep:
        name, values = parse_sweep(sweep)
        plan = [sweep_settings(base, name, value) for value in values]
    reports = []
    for settings in plan:
        report = run_benchmark(model_dir, settings, backend=backend, threads=threads, runs=runs, warmup=warmup,
                               compare=compare, diffusers_model=diffusers_model, progress=say,
                               cuda_graph=cuda_graph)
        reports.append(report)
        click.echo(format_report(report) + "\n")
    payload = reports[0]
    if sweep:
        from sdrt.benchmark.sweep import format_table, plot, sweep_rows

        rows = sweep_rows(name, values, reports)
        click.echo(format_table(name, rows))
        payload = {"sweep": sweep, "table": rows, "reports": reports}
        plot_path = plot_path or (str(Path(json_path).with_suffix(".png")) if json_path else None)
        if plot_path:
            title = f"{Path(model_dir).name}, {backend}, {base.steps} steps, batch {base.num_images}"
            written = plot(name, rows, Path(plot_path), title)
            say(f"wrote {written}" if written else "no plot: install matplotlib (pip install 'sdrt[plot]')")
    if json_path:
        Path(json_path).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        say(f"wrote {json_path}")


@main.command()
@click.option("--model", "model_dir", required=True, type=click.Path(), help="Exported model folder.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", default=7860, show_default=True, type=int)
@click.option("--backend", default="cpu", show_default=True, type=click.Choice(BACKENDS))
@click.option("--threads", default=None, type=int, help="CPU threads per engine (default: all cores).")
@click.option("--api-key", default=None, envvar="SDRT_API_KEY",
              help="Require 'Authorization: Bearer KEY' on every route but /health (or $SDRT_API_KEY).")
@click.option("--max-queue", default=16, show_default=True, type=int, help="Requests admitted; more get 503.")
@click.option("--concurrency", default=1, show_default=True, type=int, help="Generations at once.")
@click.option("--timeout", default=300.0, show_default=True, type=float, help="Seconds per request.")
@click.option("--max-batch", default=4, show_default=True, type=int,
              help="Images that compatible waiting requests may share one UNet call with (1: no batching).")
@click.option("--batch-window-ms", default=0.0, show_default=True, type=float,
              help="How long a free worker waits for compatible requests to join a batch.")
@click.option("--ray", "use_ray", is_flag=True, help="Run as a Ray Serve deployment (pip install 'sdrt[ray]').")
@click.option("--replicas", default=None, type=int, help="With --ray: a fixed number of replicas.")
@click.option("--min-replicas", default=1, show_default=True, type=int, help="With --ray: autoscaling lower bound.")
@click.option("--max-replicas", default=1, show_default=True, type=int, help="With --ray: autoscaling upper bound.")
@click.option("--gpus-per-replica", default=0.0, show_default=True, type=float,
              help="With --ray: GPUs each replica reserves (1 = one replica per GPU).")
@click.option("--cpus-per-replica", default=1.0, show_default=True, type=float,
              help="With --ray: CPUs each replica reserves (and its engine threads unless --threads).")
@click.option("--ray-address", default=None,
              help="With --ray: the cluster to join ('auto' for the one this machine belongs to); "
                   "default: start a local Ray instance.")
def serve(model_dir, host, port, backend, threads, api_key, max_queue, concurrency, timeout, max_batch,
          batch_window_ms, use_ray, replicas, min_replicas, max_replicas, gpus_per_replica, cpus_per_replica,
          ray_address) -> None:
    """Serve the model over HTTP: OpenAI Images API, AUTOMATIC1111 API, /health, /metrics."""
    try:
        import uvicorn

        from sdrt.serve.app import ServeSettings, create_app
    except ImportError as error:
        raise SdrtError(f"serve needs the serve extra ({error.name} is missing): pip install 'sdrt[serve]'")
    from sdrt.runtime.pipeline import Pipeline

    if max_queue < 1 or concurrency < 1 or timeout <= 0 or max_batch < 1 or batch_window_ms < 0:
        raise SdrtError("--max-queue, --concurrency and --max-batch must be >= 1, --timeout > 0 "
                        "and --batch-window-ms >= 0")
    settings = ServeSettings(max_queue=max_queue, concurrency=concurrency, timeout_s=timeout, api_key=api_key,
                             max_batch_images=max_batch, batch_window_s=batch_window_ms / 1000)
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        click.echo(f"warning: serving on {host} without --api-key: anyone who can reach it can use it", err=True)
    if use_ray:
        serve_on_ray(model_dir, backend, threads, settings, host, port, ray_address,
                     dict(replicas=replicas, min_replicas=min_replicas, max_replicas=max_replicas,
                          gpus_per_replica=gpus_per_replica, cpus_per_replica=cpus_per_replica))
        return
    pipeline = Pipeline.load(model_dir, backend=backend, threads=threads)
    uvicorn.run(create_app(pipeline, settings), host=host, port=port, log_level="info")


def serve_on_ray(model_dir, backend, threads, settings, host, port, address, replica_options: dict) -> None:
    try:
        from sdrt.serve import ray_serve
    except ImportError as error:
        raise SdrtError(f"--ray needs Ray Serve ({error.name} is missing): pip install 'sdrt[ray]'")
    ray_settings = ray_serve.RaySettings(**replica_options)
    ray_settings.check()
    ray_serve.run(model_dir, backend, threads, settings, ray_settings, host, port, address)
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


@main.command()
@click.argument("image", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the fields as JSON.")
def info(image: str, as_json: bool) -> None:
    """Print the generation parameters stored in an IMAGE made by sdrt (or AUTOMATIC1111)."""
    from sdrt.runtime.png_info import parse_parameters, read_parameters

    text = read_parameters(Path(image))
    click.echo(json.dumps(parse_parameters(text), ensure_ascii=False) if as_json else text)


if __name__ == "__main__":
    main()
