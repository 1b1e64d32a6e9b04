"""`sdrt bench`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sdrt.benchmark import ARCHES
from sdrt.benchmark.baselines import BASELINES
from sdrt.cli import main
from sdrt.cli.outputs import check_output, check_report, write_report
from sdrt.cli.types import THREADS, FiniteFloat
from sdrt.errors import SdrtError
from sdrt.runtime.engines import BACKEND_NAMES, DEFAULT_BACKEND
from sdrt.runtime.schedulers import DEFAULT_SAMPLER, SAMPLER_NAMES, SAMPLERS, SCHEDULE_NAMES


@main.command()
@click.option("--model", "model_dir", default=None, type=click.Path(), help="Exported model folder.")
@click.option(
    "--arch",
    default=None,
    help="Instead of --model: a random-weight model of a real architecture "
    f"({', '.join(ARCHES)}), built and exported once into "
    "~/.cache/sdrt (or $SDRT_CACHE).",
)
@click.option("--backend", default=DEFAULT_BACKEND, show_default=True, type=click.Choice(BACKEND_NAMES))
@click.option("--height", default=None, type=int, help="Image height (default: the model's native size).")
@click.option("--width", default=None, type=int, help="Image width (default: the model's native size).")
@click.option("--steps", default=10, show_default=True, type=int)
@click.option("--guidance", default=7.5, show_default=True, type=FiniteFloat(0))
@click.option("--num-images", default=1, show_default=True, type=int)
@click.option(
    "--sampler",
    "--scheduler",
    "sampler",
    default=DEFAULT_SAMPLER,
    show_default=True,
    metavar="NAME",
    help=f"Sampler: {', '.join(SAMPLER_NAMES)}.",
)
@click.option(
    "--prompt",
    default=None,
    help="The prompt every run draws, in A1111's prompt language (diffusers reads it as plain text and "
    "cuts it at 75 tokens) [default: a short plain prompt].",
)
@click.option(
    "--embedding",
    "embeddings",
    multiple=True,
    metavar="PATH[:TOKEN]",
    help="Load a textual-inversion embedding (sdrt side; repeatable).",
)
@click.option(
    "--lora",
    "loras",
    multiple=True,
    metavar="PATH[:WEIGHT]",
    help="Merge this LoRA in every run (diffusers: load_lora_weights + fuse_lora); repeatable.",
)
@click.option(
    "--controlnet",
    "controlnets",
    multiple=True,
    metavar="DIR[:SCALE]",
    help="Guide every run with this exported ControlNet and a synthetic control map (sdrt side; "
    "repeatable): the report gives its cost per step beside the UNet's.",
)
@click.option(
    "--vae",
    "vae_decoder",
    default="full",
    show_default=True,
    type=click.Choice(["full", "tiny"]),
    help="Decode with the full VAE or the export's tiny one (sdrt side).",
)
@click.option(
    "--schedule",
    default="automatic",
    show_default=True,
    type=click.Choice(SCHEDULE_NAMES),
    help="Schedule type (A1111's) for the sampler.",
)
@click.option(
    "--hires",
    default=None,
    type=FiniteFloat(1, 4),
    metavar="SCALE",
    help="Measure the hires fix: a second pass at SCALE times the size (Latent upscaler).",
)
@click.option(
    "--deepcache",
    default=None,
    metavar="INTERVAL[:BRANCH]",
    help="Measure DeepCache (an export made with --deepcache).",
)
@click.option(
    "--cache",
    "step_cache",
    default=None,
    metavar="NAME[:SETTINGS]",
    help="Measure a transformer step cache: first-block:THRESHOLD (an export made with --cache-graphs) "
    "or taylorseer:KEY=VALUE,...",
)
@click.option(
    "--latency-table",
    is_flag=True,
    help="Time per image, speed-up and image change of each shortcut the export takes (LCM, TCD, "
    "DeepCache, step caches, tiny VAE) against the plain --steps run, in this process.",
)
@click.option("--runs", default=3, show_default=True, type=int, help="Measured runs (after the warm-up).")
@click.option("--warmup", default=1, show_default=True, type=int, help="Unmeasured runs first.")
@click.option("--threads", default=None, type=THREADS, help="CPU threads (default: all cores).")
@click.option(
    "--compare",
    multiple=True,
    type=click.Choice(list(BASELINES)),
    help="Also run the same model in diffusers + torch, or sdrt's loop on OpenVINO (the same ONNX graphs), "
    "interleaved A B A B; repeatable.",
)
@click.option(
    "--sequential",
    is_flag=True,
    help="With --compare: all of sdrt's runs, then each baseline's (one model in memory at a time).",
)
@click.option(
    "--diffusers-model",
    default=None,
    type=click.Path(),
    help="The diffusers folder the export came from (default: the manifest's source).",
)
@click.option("--sweep", default=None, help="Repeat over values: height=256,512 (also width, size, batch, steps).")
@click.option("--json", "json_path", default=None, type=click.Path(), help="Write the full report here.")
@click.option("--cuda-graph", is_flag=True, help="With --backend cuda: the UNet as a CUDA graph per shape.")
@click.option(
    "--plot",
    "plot_path",
    default=None,
    type=click.Path(),
    help="With --sweep: a PNG plot here [default: beside --json] (needs matplotlib: sdrt[plot]).",
)
def bench(
    model_dir,
    arch,
    backend,
    height,
    width,
    steps,
    guidance,
    num_images,
    sampler,
    prompt,
    embeddings,
    loras,
    controlnets,
    vae_decoder,
    schedule,
    hires,
    deepcache,
    step_cache,
    latency_table,
    runs,
    warmup,
    threads,
    compare,
    sequential,
    diffusers_model,
    sweep,
    json_path,
    cuda_graph,
    plot_path,
) -> None:
    """Measure latency per stage, memory and (with --compare) the ratio to diffusers."""
    from sdrt.benchmark import BenchSettings, arch_model, parse_sweep, run_benchmark, sweep_settings
    from sdrt.benchmark.report import format_report
    from sdrt.runtime.manifest import Manifest

    def say(line: str) -> None:
        click.echo(line, err=True)

    if (model_dir is None) == (arch is None):
        raise SdrtError("pass exactly one of --model DIR or --arch NAME")
    check_report(json_path, "--json")
    if plot_path is not None:
        check_report(plot_path, "--plot")
        check_output(Path(plot_path))  # an image: never into a FIFO or a device
    if runs < 1 or warmup < 0:
        raise SdrtError("--runs must be >= 1 and --warmup >= 0")
    if deepcache is not None:
        from sdrt.runtime.features.deepcache import DeepCache

        try:
            DeepCache.parse(deepcache)
        except ValueError as error:
            raise SdrtError(f"--deepcache: {error}") from None
    if step_cache is not None:
        from sdrt.runtime.features.step_caches import parse_cache

        try:
            parse_cache(step_cache)
        except ValueError as error:
            raise SdrtError(f"--cache: {error}") from None
    if sampler not in SAMPLERS:  # flow samplers too (SD3, FLUX); the request checks the model's space
        raise SdrtError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLER_NAMES)}")
    if arch is not None:
        model_dir, source = arch_model(arch, progress=say)
        diffusers_model = diffusers_model or source
    manifest = Manifest.load(model_dir)
    if sampler == DEFAULT_SAMPLER:  # the family's own default, as a request's (both sides run it)
        sampler = manifest.model_family.default_sampler
    base = BenchSettings(
        height=height or manifest.native_height,
        width=width or manifest.native_width,
        steps=steps,
        guidance=guidance,
        num_images=num_images,
        sampler=sampler,
        loras=tuple(str(Path(lora).resolve()) if Path(lora).exists() else lora for lora in loras),
        controlnets=tuple(str(Path(c).resolve()) if Path(c).exists() else c for c in controlnets),
        vae=vae_decoder,
        schedule=schedule,
        hires=hires,
        deepcache=deepcache,
        cache=step_cache,
        **({"prompt": prompt} if prompt is not None else {}),
    )
    if latency_table:
        _latency_table(model_dir, base, backend, threads, runs, warmup, json_path, say)
        return
    plan = [base]
    if sweep:
        name, values = parse_sweep(sweep)
        plan = [sweep_settings(base, name, value) for value in values]
    reports = []
    for settings in plan:
        report = run_benchmark(
            model_dir,
            settings,
            backend=backend,
            threads=threads,
            runs=runs,
            warmup=warmup,
            compare=compare or None,
            diffusers_model=diffusers_model,
            progress=say,
            cuda_graph=cuda_graph,
            sequential=sequential,
            embeddings=list(embeddings),
        )
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
            try:
                written = plot(name, rows, Path(plot_path), title)
            except OSError as error:
                raise SdrtError(f"cannot write the plot {plot_path}: {error.strerror or error}") from None
            say(f"wrote {written}" if written else "no plot: install matplotlib (pip install 'sdrt[plot]')")
    if json_path:
        write_report(json_path, json.dumps(payload, indent=2) + "\n", "--json")
        say(f"wrote {json_path}")


def _latency_table(model_dir, base, backend, threads, runs, warmup, json_path, say) -> None:
    from sdrt.benchmark import machine_info
    from sdrt.benchmark.items import format_table, latency_table
    from sdrt.runtime.pipeline import Pipeline

    pipeline = Pipeline.load(model_dir, backend=backend, threads=threads)
    rows = latency_table(pipeline, base.request(seed=0), runs, warmup, say)
    click.echo(format_table(rows))
    if json_path:
        payload = {
            "machine": machine_info(),
            "model": str(model_dir),
            "backend": backend,
            "settings": {
                "steps": base.steps,
                "height": base.height,
                "width": base.width,
                "sampler": base.sampler,
                "guidance": base.guidance,
            },
            "items": rows,
        }
        write_report(json_path, json.dumps(payload, indent=2) + "\n", "--json")
        say(f"wrote {json_path}")
