"""`sdrt bench`: latency of a model per stage, its memory, and a side-by-side baseline.

Each side (sdrt, and diffusers with --compare) runs in its own worker process (worker.py): the
model loads once there (the cold start, reported apart), then the driver asks for runs in turn,
A B A B, so that drift in a shared machine hits both alike, and reports medians with their
spread and the ratio of each pair. Timings never decide a test: this is a command.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from sdrt.runtime.schedulers import DEFAULT_SAMPLER

import numpy as np

from sdrt import __version__
from sdrt.benchmark.driver import BenchError, Worker
from sdrt.runtime.manifest import Manifest
from sdrt.runtime.request import GenerationRequest

MATMUL_SIZE = 2048
MATMUL_REPEATS = 5
WORKER_START_TIMEOUT_S = 1800
# Flops of a multiply-add, for GFLOP/s from a count of multiply-accumulates.
FLOPS_PER_MAC = 2


PROMPT = "an astronaut riding a horse on mars, highly detailed"  # what every measured run draws

@dataclass(frozen=True)
class BenchSettings:
    height: int
    width: int
    steps: int = 10
    guidance: float = 7.5
    num_images: int = 1
    sampler: str = DEFAULT_SAMPLER

    def request(self, seed: int = 0) -> GenerationRequest:
        """The generation one measured run makes."""
        return GenerationRequest(PROMPT, steps=self.steps, guidance_scale=self.guidance, height=self.height,
                                 width=self.width, num_images=self.num_images, sampler=self.sampler, seed=seed)


def summarize(values: list[float]) -> dict:
    """Median and spread (10th and 90th percentiles, min, max) of repeated measurements."""
    data = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(data)), "p10": float(np.percentile(data, 10)),
            "p90": float(np.percentile(data, 90)), "min": float(data.min()), "max": float(data.max()),
            "count": int(data.size)}


def matmul_gflops() -> float:
    """This machine's float32 matrix multiply rate through NumPy's BLAS (median of repeats)."""
    a = np.random.default_rng(0).standard_normal((MATMUL_SIZE, MATMUL_SIZE)).astype(np.float32)
    a @ a  # warm up
    times = []
    for _ in range(MATMUL_REPEATS):
        started = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - started)
    return FLOPS_PER_MAC * MATMUL_SIZE**3 / statistics.median(times) / 1e9


def unet_gflop_per_call(diffusers_model: str | None, manifest: Manifest, settings: BenchSettings) -> float | None:
    """FLOPs of one UNet call at these settings, counted by PyTorch's FlopCounterMode on the
    meta device (no weights needed); None without torch/diffusers or the model's configs."""
    if diffusers_model is None or not (Path(diffusers_model) / "unet" / "config.json").is_file():
        return None
    try:
        import torch
        from diffusers import UNet2DConditionModel
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:
        return None
    config = UNet2DConditionModel.load_config(Path(diffusers_model) / "unet")
    batch = settings.num_images * (2 if settings.guidance > 1 else 1)
    scale = manifest.vae_scale_factor
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
        sample = torch.zeros(batch, manifest.unet_in_channels, settings.height // scale, settings.width // scale)
        context = torch.zeros(batch, manifest.text_length, manifest.text_hidden_size)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            unet(sample, torch.zeros(batch), context)
    return counter.get_total_flops() / 1e9


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version()}


def versions(compare: bool) -> dict:
    import onnxruntime

    found = {"sdrt": __version__, "numpy": np.__version__, "onnxruntime": onnxruntime.__version__}
    if compare:
        import diffusers
        import torch

        found.update(torch=torch.__version__, diffusers=diffusers.__version__)
    return found


def model_hash(manifest: Manifest) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(manifest.components):
        digest.update(manifest.components[name].sha256.encode())
    return digest.hexdigest()[:16]


def _sdrt_summary(runs: list[dict], load_seconds: float, peak: int) -> dict:
    stages = ["tokenize", "text_encoder", "denoise", "scheduler_and_guidance", "unet_host_copies", "vae_decoder", "png",
              "end_to_end"]
    steps = [t for run in runs for t in run["unet_steps"]]
    outside = [(r["end_to_end"] - r["text_encoder"] - sum(r["unet_steps"]) - r["vae_decoder"]) / r["end_to_end"]
               for r in runs]
    return {
        "load_seconds": load_seconds,
        "peak_rss_bytes": peak,
        "stages": {stage: summarize([r[stage] for r in runs]) for stage in stages if stage in runs[0]},
        "unet_step": {"p50": float(np.percentile(steps, 50)), "p90": float(np.percentile(steps, 90)),
                      "p99": float(np.percentile(steps, 99)), "count": len(steps)},
        "outside_engines_fraction": summarize(outside),
    }


def run_benchmark(model: str, settings: BenchSettings, *, backend: str = "cpu", threads: int | None = None,
                  runs: int = 3, warmup: int = 1, compare: str | None = None,
                  diffusers_model: str | None = None, progress=lambda line: None, cuda_graph: bool = False) -> dict:
    """Benchmark an exported model; with compare="diffusers" also the same model in diffusers."""
    manifest = Manifest.load(model)
    if diffusers_model is None:
        source = manifest.source.get("model")
        diffusers_model = source if source and (Path(source) / "model_index.json").is_file() else None
    if compare is not None:
        if compare != "diffusers":
            raise BenchError(f"unknown baseline {compare!r}; sdrt compares with diffusers")
        if diffusers_model is None:
            raise BenchError("--compare diffusers needs the model's diffusers folder: pass --diffusers-model DIR")
        try:
            import diffusers  # noqa: F401
            import torch  # noqa: F401
        except ImportError:
            raise BenchError("--compare diffusers needs torch and diffusers: pip install 'sdrt[export]'") from None
    settings.request().resolve(manifest)  # a setting the model cannot take: one line, before any worker
    progress(f"loading sdrt ({backend})")
    load_options = {"cuda_graph": True} if cuda_graph else {}
    workers = [Worker("sdrt", model, settings, backend, threads, load_options)]
    if compare:
        progress("loading diffusers")
        workers.append(Worker("diffusers", diffusers_model, settings, backend, threads))
    results: dict[str, list[dict]] = {w.kind: [] for w in workers}
    try:
        for index in range(warmup + runs):
            for worker in workers:  # A B A B: drift on a shared machine hits both sides alike
                timing = worker.run()
                if index >= warmup:
                    results[worker.kind].append(timing)
            label = "warm-up" if index < warmup else f"run {index - warmup + 1}/{runs}"
            progress(f"{label}: " + ", ".join(f"{k} {results[k][-1]['end_to_end']:.3f}s" for k in results
                                              if index >= warmup))
    finally:
        peaks = {w.kind: w.close() for w in workers}
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
        "versions": versions(compare is not None),
        "runs": runs,
        "warmup": warmup,
        "sdrt": _sdrt_summary(results["sdrt"], workers[0].load_seconds, peaks["sdrt"]["peak_rss_bytes"]),
    }
    report["sdrt"]["peak_gpu_bytes"] = peaks["sdrt"].get("peak_gpu_bytes")
    flop = unet_gflop_per_call(diffusers_model, manifest, settings)
    report["unet_gflop_per_call"] = flop
    report["matmul_gflops"] = matmul_gflops()
    if flop is not None:
        report["unet_gflops_achieved"] = flop / report["sdrt"]["unet_step"]["p50"]
    if compare:
        baseline = results["diffusers"]
        pairs = [b["end_to_end"] / a["end_to_end"] for a, b in zip(results["sdrt"], baseline)]
        report["diffusers"] = {"load_seconds": workers[1].load_seconds,
                               "peak_rss_bytes": peaks["diffusers"]["peak_rss_bytes"],
                               "peak_gpu_bytes": peaks["diffusers"].get("peak_gpu_bytes"),
                               "end_to_end": summarize([b["end_to_end"] for b in baseline])}
        report["speedup_vs_diffusers"] = {"pairs": pairs, **summarize(pairs)}
        report["memory_ratio_vs_diffusers"] = (peaks["sdrt"]["peak_rss_bytes"]
                                               / peaks["diffusers"]["peak_rss_bytes"])
        if report["sdrt"]["peak_gpu_bytes"] and report["diffusers"]["peak_gpu_bytes"]:
            report["gpu_memory_ratio_vs_diffusers"] = (report["sdrt"]["peak_gpu_bytes"]
                                                       / report["diffusers"]["peak_gpu_bytes"])
    return report


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
    changes = {"height": {"height": value}, "width": {"width": value}, "size": {"height": value, "width": value},
               "batch": {"num_images": value}, "steps": {"steps": value}}[name]
    return BenchSettings(**{**asdict(base), **changes})


def ort_cache_state() -> dict:
    from sdrt.runtime.engines import ort_cache

    return {"enabled": ort_cache.enabled(), "folder": str(ort_cache.cache_root() / "ort")}


def cache_dir() -> Path:
    from sdrt.runtime.engines.ort_cache import cache_root

    return cache_root()


#: Architectures `--arch` builds with random weights: SD 1.5 and SDXL 1.0 base (bundled presets).
ARCHES = ("sd15", "sdxl")


def arch_model(arch: str, progress=lambda line: None) -> tuple[str, str]:
    """(export folder, diffusers folder) of a random-weight model of a real architecture,
    built and exported once into the cache."""
    if arch not in ARCHES:
        raise BenchError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHES)}")
    try:
        from sdrt.export.exporter import export_model
        from sdrt.export.random_model import save_random_pipeline
        from sdrt.export.random_sdxl import save_random_sdxl
    except ImportError:
        raise BenchError("--arch needs the export extra to build the model: pip install 'sdrt[export]'") from None
    root = cache_dir() / "arch"
    source, engine = root / f"{arch}-diffusers", root / f"{arch}-onnx-fp32"
    if not (source / "model_index.json").is_file():
        progress(f"building a random-weight {arch} model in {source} (once)")
        root.mkdir(parents=True, exist_ok=True)
        if arch == "sdxl":
            save_random_sdxl(source, size="full", kind="base", seed=0)
        else:
            save_random_pipeline(source, size=arch, kind="standard", seed=0)
    if not (engine / "manifest.json").is_file():
        progress(f"exporting it to {engine} (once)")
        export_model(str(source), engine, overwrite=engine.exists(), progress=progress)
    return str(engine), str(source)


def format_report(report: dict) -> str:
    """A human-readable summary of one benchmark report."""
    s, sd = report["settings"], report["sdrt"]
    lines = [f"{s['width']}x{s['height']}, {s['steps']} steps, guidance {s['guidance']}, "
             f"batch {s['num_images']}, {s['sampler']}, {report['backend']}, {report['threads']} threads",
             f"load (cold start)        {sd['load_seconds']:.2f} s"]
    for stage, summary in sd["stages"].items():
        lines.append(f"{stage:<24} {summary['median'] * 1e3:10.1f} ms  (p10 {summary['p10'] * 1e3:.1f}, "
                     f"p90 {summary['p90'] * 1e3:.1f})")
    step = sd["unet_step"]
    lines.append(f"UNet step p50/p90/p99     {step['p50'] * 1e3:.1f} / {step['p90'] * 1e3:.1f} / "
                 f"{step['p99'] * 1e3:.1f} ms")
    lines.append(f"outside the engines      {sd['outside_engines_fraction']['median'] * 100:.2f} % of end to end")
    lines.append(f"peak memory              {sd['peak_rss_bytes'] / 2**30:.2f} GiB")
    if sd.get("peak_gpu_bytes"):
        lines.append(f"peak GPU memory          {sd['peak_gpu_bytes'] / 2**30:.2f} GiB (nvidia-smi)")
    if report.get("unet_gflops_achieved") is not None:
        lines.append(f"UNet                     {report['unet_gflops_achieved']:.1f} GFLOP/s achieved "
                     f"({report['unet_gflop_per_call']:.1f} GFLOP a call); machine matmul "
                     f"{report['matmul_gflops']:.1f} GFLOP/s")
    if "diffusers" in report:
        d = report["diffusers"]
        lines.append(f"diffusers end to end     {d['end_to_end']['median'] * 1e3:10.1f} ms, load "
                     f"{d['load_seconds']:.2f} s, peak {d['peak_rss_bytes'] / 2**30:.2f} GiB")
        ratio = report["speedup_vs_diffusers"]
        lines.append(f"speedup vs diffusers     {ratio['median']:.2f}x median of "
                     f"{len(ratio['pairs'])} interleaved pairs (min {ratio['min']:.2f}, max {ratio['max']:.2f}); "
                     f"memory {report['memory_ratio_vs_diffusers']:.2f}x")
    return "\n".join(lines)
