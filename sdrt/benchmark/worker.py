"""One side of a benchmark, in its own process so its memory peak is its own.

`python -m sdrt.benchmark.worker sdrt|diffusers MODEL SETTINGS_JSON [BACKEND] [THREADS] [LOAD_JSON]` loads the
model, prints `{"ready": ..., "load_seconds": ...}`, then answers each `run` line on stdin with one
JSON line of timings, and `quit` with its peak resident memory. The sdrt side imports no torch.
"""

from __future__ import annotations

import io
import json
import os
import resource
import subprocess
import sys
import time

from sdrt.benchmark import PROMPT, BenchSettings
from sdrt.errors import SdrtError

KIB = 1024


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB  # Linux reports KiB


GPU_QUERY = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
MIB = 2**20


def parse_compute_apps(text: str, pid: int) -> int | None:
    """Bytes of GPU memory `pid` holds in nvidia-smi's compute-apps CSV (pid, MiB), or None."""
    used = [
        int(fields[1])
        for fields in (line.split(",") for line in text.splitlines())
        if len(fields) == 2 and fields[0].strip() == str(pid) and fields[1].strip().isdigit()
    ]
    return sum(used) * MIB if used else None


def gpu_memory_bytes(pid: int) -> int | None:
    """GPU memory this process holds now, as nvidia-smi sees it (the same measure for ONNX
    Runtime, TensorRT and torch, CUDA context included); None without nvidia-smi. Framework
    allocators keep what they grew to, so after a run this is that run's peak."""
    try:
        done = subprocess.run(GPU_QUERY, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_compute_apps(done.stdout, pid) if done.returncode == 0 else None


def png_seconds(image) -> float:
    started = time.perf_counter()
    image.save(io.BytesIO(), format="PNG")
    return time.perf_counter() - started


class SdrtSide:
    def __init__(self, model: str, settings: dict, backend: str, threads: int | None, load_options: dict):
        from sdrt.runtime.pipeline import Pipeline

        self.pipeline = Pipeline.load(model, backend=backend, threads=threads, **load_options)
        self.settings = settings

    def run(self, seed: int) -> dict:
        s = self.settings
        result = self.pipeline.run(BenchSettings(**s).request(seed))
        timings = dict(result.timings)
        timings["png"] = png_seconds(result.images[0])
        timings["end_to_end"] = timings["total"] + timings["png"]
        return timings


#: diffusers' flow-matching schedulers (FLUX.1, SD3): sdrt runs the family's own sampler on them
#: when the bench asks for the default one (GenerationRequest.resolve), so diffusers keeps its own.
FLOW_SCHEDULER_PREFIX = "FlowMatch"


def is_flow_scheduler(config: dict) -> bool:
    return str(config.get("_class_name", "")).startswith(FLOW_SCHEDULER_PREFIX)


class DiffusersSide:
    def __init__(self, model: str, settings: dict, backend: str, threads: int | None, load_options: dict):
        import diffusers
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.device = "cuda" if backend == "cuda" else "cpu"
        dtype = torch.float16 if self.device == "cuda" else torch.float32
        from sdrt.export.sources import load_folder

        pipeline = load_folder(model, torch_dtype=dtype)  # SD 1.x/2.x or SDXL, as the folder says
        with open(f"{model}/scheduler/scheduler_config.json", encoding="utf-8") as handle:
            config = json.load(handle)
        from sdrt.runtime.schedulers import DEFAULT_SAMPLER, SAMPLERS

        sampler = SAMPLERS[settings["sampler"]]
        if not (settings["sampler"] == DEFAULT_SAMPLER and is_flow_scheduler(config)):  # a flow model keeps its own
            pipeline.scheduler = getattr(diffusers, sampler.reference_name).from_config({**config, **sampler.overrides})
        pipeline.set_progress_bar_config(disable=True)
        self._fuse_loras(pipeline, settings.get("loras") or [])
        self.pipeline = pipeline.to(self.device)
        self.settings = settings
        self.denoiser_calls: list[float] = []
        self._time_denoiser(getattr(pipeline, "transformer", None) or pipeline.unet)

    def _time_denoiser(self, module) -> None:
        """Seconds of each denoiser call (the UNet or transformer), as sdrt's unet_steps."""
        started: list[float] = []

        def before(*_):
            if self.device == "cuda":
                self.torch.cuda.synchronize()
            started.append(time.perf_counter())

        def after(*_):
            if self.device == "cuda":
                self.torch.cuda.synchronize()
            self.denoiser_calls.append(time.perf_counter() - started.pop())

        module.register_forward_pre_hook(before)
        module.register_forward_hook(after)

    @staticmethod
    def _fuse_loras(pipeline, loras: list[str]) -> None:
        """The LoRAs sdrt merges, fused into the weights (no per-step LoRA cost on either side)."""
        from sdrt.runtime.features.lora.tags import LoraRef

        if not loras:
            return
        refs = [LoraRef.parse(text) for text in loras]
        names = [f"lora{index}" for index in range(len(refs))]
        for name, ref in zip(names, refs):
            pipeline.load_lora_weights(ref.source, adapter_name=name)
        pipeline.set_adapters(names, [ref.weights.unet for ref in refs])
        pipeline.fuse_lora(adapter_names=names)

    def run(self, seed: int) -> dict:
        s = self.settings
        torch = self.torch
        self.denoiser_calls.clear()
        started = time.perf_counter()
        with torch.inference_mode():
            images = self.pipeline(
                prompt=s.get("prompt", PROMPT),  # by name: Flux2KleinPipeline's first argument is the image
                num_inference_steps=s["steps"],
                guidance_scale=s["guidance"],
                height=s["height"],
                width=s["width"],
                num_images_per_prompt=s["num_images"],
                generator=torch.Generator("cpu").manual_seed(seed),
            ).images
        if self.device == "cuda":
            torch.cuda.synchronize()
        total = time.perf_counter() - started
        png = png_seconds(images[0])
        return {"total": total, "png": png, "end_to_end": total + png, "unet_steps": list(self.denoiser_calls)}


def main() -> None:
    """Runs the worker; an sdrt error is answered as one JSON line {"error": message}."""
    try:
        serve_commands()
    except SdrtError as error:
        print(json.dumps({"error": str(error)}), flush=True)
        sys.exit(error.exit_code)


def serve_commands() -> None:
    kind, model, settings = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    backend = sys.argv[4] if len(sys.argv) > 4 else "cpu"
    threads = int(sys.argv[5]) if len(sys.argv) > 5 and sys.argv[5] != "0" else None
    load_options = json.loads(sys.argv[6]) if len(sys.argv) > 6 else {}  # sdrt's Pipeline.load options
    started = time.perf_counter()
    side = (SdrtSide if kind == "sdrt" else DiffusersSide)(model, settings, backend, threads, load_options)
    print(json.dumps({"ready": kind, "load_seconds": time.perf_counter() - started}), flush=True)
    seed = 0
    peak_gpu = None
    for line in sys.stdin:
        command = line.strip()
        if command == "run":
            timings = side.run(seed)
            if backend != "cpu":
                used = gpu_memory_bytes(os.getpid())
                peak_gpu = used if peak_gpu is None or (used or 0) > peak_gpu else peak_gpu
            print(json.dumps(timings), flush=True)
            seed += 1
        elif command == "quit":
            break
    print(json.dumps({"peak_rss_bytes": peak_rss_bytes(), "peak_gpu_bytes": peak_gpu}), flush=True)


if __name__ == "__main__":
    main()
