"""`sdrt export`, `sdrt build`, `sdrt verify` and `sdrt info`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from sdrt.cli import main
from sdrt.cli.export_options import export_options
from sdrt.cli.outputs import check_report, write_report
from sdrt.cli.progress import ComponentLines
from sdrt.cli.types import FiniteFloat
from sdrt.errors import SdrtError
from sdrt.runtime.engines import BACKEND_NAMES, DEFAULT_BACKEND


@main.command()
@click.argument("model", required=False)
@export_options
def export(
    model: str | None,
    random_name: str | None,
    out_dir: str | None,
    config_dir: str | None,
    precision: str,
    vae_precision: str,
    t5_precision: str | None,
    no_t5: bool,
    target: str,
    optimize: bool,
    fused_attention: bool | None,
    max_prompt_chunks: int,
    tiny_vae: str | None,
    deepcache: bool,
    cache_graphs: bool,
    weights: str | None,
    weight_block: str,
    qdq: str | None,
    qdq_prompts: int,
    overwrite: bool,
) -> None:
    """Export MODEL (diffusers folder, .safetensors/.ckpt checkpoint or hub id) to validated
    ONNX with a manifest.json, in the layout OnnxStableDiffusionPipeline reads."""
    try:
        from sdrt.export.exporter import ExportOptions, check_out_dir, export_model
        from sdrt.export.quiet import quiet_libraries
    except ImportError as error:
        raise SdrtError(
            f"export needs the export extra ({error.name} is missing): pip install 'sdrt[export]'"
        ) from error
    quiet_libraries()
    lines = ComponentLines()
    if (model is None) == (random_name is None):
        raise SdrtError("pass a MODEL to export, or --random NAME for a random-weight one")
    if out_dir is not None and not out_dir.strip():
        raise SdrtError("--out is empty: give the folder to export to")
    if out_dir is None:
        name = f"random-{random_name}" if random_name is not None else Path(model.rstrip("/")).stem.replace("/", "--")
        out_dir = str(Path("engines") / name)
    check_out_dir(Path(out_dir), overwrite)  # before any work
    if random_name is not None:
        from sdrt.export.random_sources import random_source
        from sdrt.runtime.engines.ort_cache import cache_root

        model = str(random_source(random_name, cache_root() / "random", lines))
    options = ExportOptions(
        precision=precision,
        vae_precision=vae_precision,
        t5_precision=t5_precision,
        no_t5=no_t5,
        target=target,
        optimize=optimize,
        fused_attention=fused_attention,
        max_prompt_chunks=max_prompt_chunks,
        tiny_vae=tiny_vae,
        deepcache=deepcache,
        cache_graphs=cache_graphs,
        weights=weights,
        weight_block=int(weight_block),
        qdq=qdq,
        qdq_prompts=qdq_prompts,
    )
    try:
        manifest = export_model(model, out_dir, config=config_dir, options=options, overwrite=overwrite, progress=lines)
    finally:
        lines.flush()
    click.echo(f"exported {len(manifest.components)} components to {out_dir}")


@main.command()
@click.argument("model_dir", type=click.Path())
@click.option(
    "--static",
    "static_size",
    default=None,
    metavar="WxH",
    help="One fixed image size (fastest, and the UNet runs as a CUDA graph).",
)
@click.option("--min", "min_size", default=None, metavar="WxH", help="Smallest size [default: the export's].")
@click.option("--opt", "opt_size", default=None, metavar="WxH", help="Size to tune for [default: native].")
@click.option("--max", "max_size", default=None, metavar="WxH", help="Largest size [default: the export's].")
@click.option("--max-batch", default=4, show_default=True, type=int, help="Most images per call.")
@click.option(
    "--max-prompt-chunks",
    default=None,
    type=int,
    help="Longest prompt, in chunks of 75 tokens [default: the export's limit].",
)
@click.option(
    "--precision",
    default="fp16",
    show_default=True,
    type=click.Choice(["fp16", "fp32"]),
    help="For fp32 exports (fp16 exports build as exported; the VAE stays fp32).",
)
@click.option(
    "--workspace-gb",
    default=8.0,
    show_default=True,
    type=FiniteFloat(0, low_open=True),
    help="Builder scratch memory limit.",
)
@click.option("--force", is_flag=True, help="Rebuild even engines that are up to date.")
@click.option(
    "--verify",
    "then_verify",
    is_flag=True,
    help="Then generate one image with TensorRT and on the CPU and compare them (sdrt verify).",
)
def build(
    model_dir,
    static_size,
    min_size,
    opt_size,
    max_size,
    max_batch,
    max_prompt_chunks,
    precision,
    workspace_gb,
    force,
    then_verify,
) -> None:
    """Build TensorRT engines for an exported MODEL_DIR (into MODEL_DIR/tensorrt/)."""
    from sdrt.runtime.engines.tensorrt.plan import BuildSettings
    from sdrt.runtime.engines.tensorrt.profiles import plan_profile
    from sdrt.runtime.manifest import Manifest
    from sdrt.runtime.sizes import parse_size

    manifest = Manifest.load(model_dir)
    sizes = {
        name: parse_size(value, f"--{name}") if value else None
        for name, value in (("static", static_size), ("min", min_size), ("opt", opt_size), ("max", max_size))
    }
    if workspace_gb <= 0:
        raise SdrtError("--workspace-gb must be positive")
    profile = plan_profile(
        manifest,
        static=sizes["static"],
        min_size=sizes["min"],
        opt_size=sizes["opt"],
        max_size=sizes["max"],
        max_batch=max_batch,
        max_prompt_chunks=max_prompt_chunks,
    )
    settings = BuildSettings(profile, precision, int(workspace_gb * 2**30))
    from sdrt.runtime.engines.tensorrt.build import build_engines

    started = time.perf_counter()
    plans = build_engines(model_dir, settings, progress=lambda line: click.echo(line, err=True), force=force)
    click.echo(
        f"{len(plans)} engines ready in {time.perf_counter() - started:.0f} s: "
        + ", ".join(str(path) for path in plans.values())
    )
    if then_verify:
        _verify(model_dir, "tensorrt", None)


@main.command()
@click.argument("model_dir", type=click.Path())
@click.option(
    "--backend",
    required=True,
    type=click.Choice([b for b in BACKEND_NAMES if b != DEFAULT_BACKEND]),
    help="The backend to check against the fp32 CPU path.",
)
@click.option("--steps", default=8, show_default=True, type=int)
@click.option("--json", "json_path", default=None, help="Also write the report here.")
def verify(model_dir, backend, steps, json_path) -> None:
    """Generate one image with BACKEND and on the CPU, and compare them (exit 1 if they differ
    by more than the documented tolerance, or the image has NaNs)."""
    _verify(model_dir, backend, json_path, steps)


def _verify(model_dir, backend, json_path, steps: int = 8) -> None:
    from sdrt.runtime.verify import verify as run_verify

    check_report(json_path, "--json")
    report = run_verify(model_dir, backend, steps=steps, progress=lambda line: click.echo(line, err=True))
    if json_path:
        write_report(json_path, json.dumps(report, indent=2) + "\n", "--json")
    click.echo(json.dumps(report))
    if not report["passed"]:
        click.echo(
            f"error: {backend} differs from the CPU path by {report['mean_abs'] * 255:.2f}/255 on average "
            f"(tolerance {report['tolerance_mean_abs'] * 255:.1f}/255), finite: {report['finite']}",
            err=True,
        )
        sys.exit(1)


@main.command()
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the fields as JSON (numbers as numbers).")
def info(path: str, as_json: bool) -> None:
    """Print what PATH is: an export folder's model, sizes and components, or the generation
    parameters stored in an image made by sdrt (or AUTOMATIC1111)."""
    from sdrt.runtime.imaging.png_info import parse_parameters, read_parameters, typed_parameters

    if Path(path).is_dir():
        from sdrt.runtime.model_summary import format_summary, model_summary

        summary = model_summary(path)
        click.echo(json.dumps(summary) if as_json else format_summary(summary))
        return
    text = read_parameters(Path(path))
    click.echo(json.dumps(typed_parameters(parse_parameters(text)), ensure_ascii=False) if as_json else text)
