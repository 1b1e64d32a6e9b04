"""`sdrt bench`: latency of a model per stage, its memory, and a side-by-side baseline.

Each side (sdrt, and diffusers with --compare) runs in its own worker process (worker.py): the
model loads once there (the cold start, reported apart), then the driver asks for runs in turn,
A B A B, so that drift in a shared machine hits both alike, and reports medians with their
spread and the ratio of each pair. Timings never decide a test: this is a command.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sdrt.benchmark.baselines import check_openvino, parse_baselines, summarize_pairs
from sdrt.benchmark.driver import BenchError, Worker
from sdrt.benchmark.machine import machine_info, matmul_gflops, model_hash, unet_gflop_per_call, versions
from sdrt.runtime.features.deepcache import DeepCache
from sdrt.runtime.features.hires import HiresFix
from sdrt.runtime.features.step_caches import parse_cache
from sdrt.runtime.manifest import Manifest
from sdrt.runtime.request import GenerationRequest
from sdrt.runtime.schedulers import DEFAULT_SAMPLER

WORKER_START_TIMEOUT_S = 1800


PROMPT = "an astronaut riding a horse on mars, highly detailed"  # what every measured run draws


@dataclass(frozen=True)
class BenchSettings:
    height: int
    width: int
    steps: int = 10
    guidance: float = 7.5
    num_images: int = 1
    sampler: str = DEFAULT_SAMPLER
    prompt: str = PROMPT  # sdrt reads it in A1111's prompt language; diffusers as plain text
    loras: tuple[str, ...] = ()  # PATH[:WEIGHT]: merged on both sides (diffusers: load_lora_weights + fuse)
    controlnets: tuple[str, ...] = ()  # DIR[:SCALE], each with a synthetic control map (sdrt side)
    vae: str = "full"  # the decoder ("tiny": the export's tiny VAE; diffusers: its AutoencoderTiny is not loaded)
    schedule: str = "automatic"  # A1111's schedule type (sdrt.runtime.schedulers.schedules)
    hires: float | None = None  # the hires fix's scale (Latent upscaler, as many steps, strength 0.7)
    deepcache: str | None = None  # DeepCache "INTERVAL[:BRANCH]" (an export made with --deepcache)
    cache: str | None = None  # a transformer step cache "NAME[:SETTINGS]" (sdrt.runtime.features.step_caches)

    def request(self, seed: int = 0) -> GenerationRequest:
        """The generation one measured run makes."""
        from sdrt.runtime.features.controlnet.units import ControlUnit

        image = control_map(self.height, self.width) if self.controlnets else None
        return GenerationRequest(
            self.prompt,
            steps=self.steps,
            guidance_scale=self.guidance,
            height=self.height,
            width=self.width,
            num_images=self.num_images,
            sampler=self.sampler,
            seed=seed,
            loras=list(self.loras),
            vae=self.vae,
            schedule=self.schedule,
            hires=None if self.hires is None else HiresFix(scale=self.hires),
            deepcache=None if self.deepcache is None else DeepCache.parse(self.deepcache),
            cache=None if self.cache is None else parse_cache(self.cache),
            controlnets=[ControlUnit.parse(text, image) for text in self.controlnets],
        )


def control_map(height: int, width: int):
    """A fixed control map for benchmarks: white outlines of nested rectangles on black."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    for inset in range(0, min(height, width) // 2, max(1, min(height, width) // 16)):
        draw.rectangle([inset, inset, width - 1 - inset, height - 1 - inset], outline=(255, 255, 255))
    return image


def summarize(values: list[float]) -> dict:
    """Median and spread (10th and 90th percentiles, min, max) of repeated measurements."""
    data = np.asarray(values, dtype=np.float64)
    return {
        "median": float(np.median(data)),
        "p10": float(np.percentile(data, 10)),
        "p90": float(np.percentile(data, 90)),
        "min": float(data.min()),
        "max": float(data.max()),
        "count": int(data.size),
    }


def _sdrt_summary(runs: list[dict], load_seconds: float, peak: int) -> dict:
    stages = [
        "tokenize",
        "text_encoder",
        "denoise",
        "scheduler_and_guidance",
        "unet_host_copies",
        "vae_decoder",
        "png",
        "first_pass_total",
        "end_to_end",
    ]
    steps = [t for run in runs for t in run["unet_steps"]]
    outside = [
        (
            r["end_to_end"]
            - r["text_encoder"]
            - sum(r["unet_steps"])
            - sum(r.get("controlnet_steps", ()))
            - r["vae_decoder"]
        )
        / r["end_to_end"]
        for r in runs
    ]
    return {
        "load_seconds": load_seconds,
        "peak_rss_bytes": peak,
        "stages": {stage: summarize([r[stage] for r in runs]) for stage in stages if stage in runs[0]},
        "unet_step": {
            "p50": float(np.percentile(steps, 50)),
            "p90": float(np.percentile(steps, 90)),
            "p99": float(np.percentile(steps, 99)),
            "count": len(steps),
        },
        "outside_engines_fraction": summarize(outside),
        **(
            {"controlnet_step": summarize([t for run in runs for t in run["controlnet_steps"]])}
            if "controlnet_steps" in runs[0]
            else {}
        ),
    }


def _check_diffusers(settings: BenchSettings, diffusers_model: str | None) -> None:
    if diffusers_model is None:
        raise BenchError("--compare diffusers needs the model's diffusers folder: pass --diffusers-model DIR")
    if (
        settings.controlnets
        or settings.vae != "full"
        or settings.hires
        or settings.schedule != "automatic"
        or settings.deepcache
        or settings.cache
    ):
        raise BenchError(
            "--compare diffusers with --controlnet, --vae tiny, --hires, --schedule, --deepcache or --cache is "
            "not supported yet: measure sdrt alone (or use --latency-table)"
        )
    try:
        import diffusers  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        raise BenchError("--compare diffusers needs torch and diffusers: pip install 'sdrt[export]'") from None


def run_benchmark(
    model: str,
    settings: BenchSettings,
    *,
    backend: str = "cpu",
    threads: int | None = None,
    runs: int = 3,
    warmup: int = 1,
    compare: str | tuple[str, ...] | None = None,
    diffusers_model: str | None = None,
    progress=lambda line: None,
    cuda_graph: bool = False,
    sequential: bool = False,
    embeddings: list[str] | None = None,
) -> dict:
    """Benchmark an exported model; with compare="diffusers" also the same model in diffusers, with
    "openvino" sdrt's loop on OpenVINO (sdrt.benchmark.baselines), interleaved run by run, or one
    after the other with `sequential`."""
    manifest = Manifest.load(model)
    if diffusers_model is None:
        source = manifest.source.get("model")
        diffusers_model = source if source and (Path(source) / "model_index.json").is_file() else None
    baselines = parse_baselines(compare)
    names = [baseline.name for baseline in baselines]
    if "diffusers" in names:
        _check_diffusers(settings, diffusers_model)
    if "openvino" in names:
        check_openvino(backend)
    settings.request().resolve(manifest)  # a setting the model cannot take: one line, before any worker
    load_options = {"cuda_graph": True} if cuda_graph else {}
    if embeddings:
        load_options["embeddings"] = [str(Path(e).resolve()) if Path(e).exists() else e for e in embeddings]
    sides = [("sdrt", "sdrt", model, load_options, backend)] + [
        (
            b.name,
            b.worker,
            diffusers_model if b.worker == "diffusers" else model,
            {} if b.worker == "diffusers" else load_options,
            b.backend or backend,
        )
        for b in baselines
    ]
    results: dict[str, list[dict]] = {side[0]: [] for side in sides}
    peaks, loads = {}, {}
    # Interleaved (A B A B): drift on a shared machine hits both sides alike. Sequential: one
    # side at a time, for models of which two copies do not fit in memory (SDXL on 24 GiB).
    for group in [[side] for side in sides] if sequential else [sides]:
        workers = []
        try:
            for label, kind, path, options, engine in group:
                progress(f"loading {label} ({engine})")
                workers.append(Worker(kind, path, settings, engine, threads, options, label=label))
            _measure(workers, warmup, runs, results, progress)
        finally:
            peaks.update({w.kind: w.close() for w in workers})
            loads.update({w.kind: w.load_seconds for w in workers})
    report = {
        "settings": asdict(settings),
        "backend": backend,
        "load_options": load_options,
        # With the optimized-graph cache on, "load" is a cached load once the first run saved it.
        "ort_cache": ort_cache_state(),
        "threads": threads or os.cpu_count(),
        "precision": {name: spec.precision for name, spec in manifest.components.items()},
        "model": {"path": str(model), "hash": model_hash(manifest)},
        "machine": machine_info(),
        "versions": versions("diffusers" in names, "openvino" in names),
        "runs": runs,
        "warmup": warmup,
        "sequential": sequential,
        "sdrt": _sdrt_summary(results["sdrt"], loads["sdrt"], peaks["sdrt"]["peak_rss_bytes"]),
    }
    report["sdrt"]["peak_gpu_bytes"] = peaks["sdrt"].get("peak_gpu_bytes")
    flop = unet_gflop_per_call(diffusers_model, manifest, settings)
    report["unet_gflop_per_call"] = flop
    report["matmul_gflops"] = matmul_gflops()
    if flop is not None:
        report["unet_gflops_achieved"] = flop / report["sdrt"]["unet_step"]["p50"]
    if "diffusers" in names:
        baseline = results["diffusers"]
        report["diffusers"] = {
            "load_seconds": loads["diffusers"],
            "peak_rss_bytes": peaks["diffusers"]["peak_rss_bytes"],
            "peak_gpu_bytes": peaks["diffusers"].get("peak_gpu_bytes"),
            "end_to_end": summarize([b["end_to_end"] for b in baseline]),
            "unet_step": summarize([t for b in baseline for t in b["unet_steps"]]),  # its UNet/transformer calls
        }
        report["speedup_vs_diffusers"] = summarize_pairs(results["sdrt"], baseline, summarize)
        report["memory_ratio_vs_diffusers"] = peaks["sdrt"]["peak_rss_bytes"] / peaks["diffusers"]["peak_rss_bytes"]
        if report["sdrt"]["peak_gpu_bytes"] and report["diffusers"]["peak_gpu_bytes"]:
            report["gpu_memory_ratio_vs_diffusers"] = (
                report["sdrt"]["peak_gpu_bytes"] / report["diffusers"]["peak_gpu_bytes"]
            )
    if "openvino" in names:  # sdrt's loop on OpenVINO: the same stages as sdrt's own
        report["openvino"] = _sdrt_summary(results["openvino"], loads["openvino"], peaks["openvino"]["peak_rss_bytes"])
        report["speedup_vs_openvino"] = summarize_pairs(results["sdrt"], results["openvino"], summarize)
        report["memory_ratio_vs_openvino"] = peaks["sdrt"]["peak_rss_bytes"] / peaks["openvino"]["peak_rss_bytes"]
        if flop is not None:
            report["openvino"]["unet_gflops_achieved"] = flop / report["openvino"]["unet_step"]["p50"]
    return report


def _measure(workers: list, warmup: int, runs: int, results: dict, progress) -> None:
    """Warm-up and measured runs, the workers taking turns each run."""
    for index in range(warmup + runs):
        for worker in workers:
            timing = worker.run()
            if index >= warmup:
                results[worker.kind].append(timing)
        label = "warm-up" if index < warmup else f"run {index - warmup + 1}/{runs}"
        progress(
            f"{label}: "
            + ", ".join(f"{w.kind} {results[w.kind][-1]['end_to_end']:.3f}s" for w in workers if index >= warmup)
        )


def parse_sweep(text: str) -> tuple[str, list[int]]:
    """'height=256,512' -> ('height', [256, 512]); height also sets width (square images)."""
    name, _, values = text.partition("=")
    allowed = ("height", "width", "size", "batch", "steps")
    if name not in allowed or not values:
        raise BenchError(f"--sweep takes NAME=V1,V2 with NAME one of {', '.join(allowed)}, got {text!r}")
    try:
        return name, [int(v) for v in values.split(",")]
    except ValueError:
        raise BenchError(f"--sweep values must be integers, got {values!r}") from None


def sweep_settings(base: BenchSettings, name: str, value: int) -> BenchSettings:
    changes = {
        "height": {"height": value},
        "width": {"width": value},
        "size": {"height": value, "width": value},
        "batch": {"num_images": value},
        "steps": {"steps": value},
    }[name]
    return BenchSettings(**{**asdict(base), **changes})


def ort_cache_state() -> dict:
    from sdrt.runtime.engines import ort_cache

    return {"enabled": ort_cache.enabled(), "folder": str(ort_cache.cache_root() / "ort")}


def cache_dir() -> Path:
    from sdrt.runtime.engines.ort_cache import cache_root

    return cache_root()


#: Architectures `--arch` builds with random weights: SD 1.5 and SDXL 1.0 base (bundled presets), a
#: tiny SD3.5-Medium-shaped model (sdrt.export.random_sd3: seconds, for trying the path), SD3.5
#: Medium at full size without T5 (sdrt.export.random_sd35), a tiny Z-Image Turbo
#: (sdrt.export.random_zimage), a tiny FLUX.1 dev and a tiny distilled FLUX.2 [klein]
#: (sdrt.export.random_flux2).
ARCHES = ("sd15", "sdxl", "tiny-sd3", "sd35-medium", "tiny-zimage", "flux-tiny", "tiny-flux2-klein")
#: Architectures whose random model `sdrt export --random` names otherwise (sdrt.export.random_sources).
ARCH_RANDOM_NAMES = {"flux-tiny": "tiny-flux"}  # the tiny FLUX.1 dev


def arch_model(arch: str, progress=lambda line: None) -> tuple[str, str]:
    """(export folder, diffusers folder) of a random-weight model of a real architecture,
    built and exported once into the cache."""
    if arch not in ARCHES:
        raise BenchError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHES)}")
    try:
        from sdrt.export.exporter import export_model
        from sdrt.export.random_sources import random_source
    except ImportError:
        raise BenchError("--arch needs the export extra to build the model: pip install 'sdrt[export]'") from None
    root = cache_dir() / "arch"
    source, engine = random_source(ARCH_RANDOM_NAMES.get(arch, arch), root, progress), root / f"{arch}-onnx-fp32"
    if not (engine / "manifest.json").is_file():
        progress(f"exporting it to {engine} (once)")
        export_model(str(source), engine, overwrite=engine.exists(), progress=progress)
    return str(engine), str(source)
