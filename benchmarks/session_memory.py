"""Peak resident memory of ONNX Runtime sessions of an exported model, per session option.

    PYTHONPATH=$PWD python benchmarks/session_memory.py MODEL_FOLDER [--components transformer]
        [--height 512 --width 512 --batch 2] [--variants default,no_arena,...] [--json OUT]

Each variant runs in its own process (so each peak is its own): it opens the components as sdrt's
CPU backend does (the cached optimized graph when sdrt.runtime.engines.ort_cache has one, with
optimizations off; else the exported graph at the highest level), with the variant's options, and
reports the load time and the peak RSS (VmHWM) after loading, then the time and peak of `--calls`
calls of the first component with zero inputs at the given size (batch = the denoiser's batch, 2
with classifier-free guidance), then of each other component once. Options tried (ONNX Runtime's
SessionOptions and session config keys): the CPU memory arena off, MatMul weight prepacking off,
the memory pattern planner off, one arena shared by all the sessions.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from sdrt.runtime.engines.ort_arena import USE_ENV_ALLOCATORS

#: Variant name -> (SessionOptions attributes, session config entries).
VARIANTS = {
    "default": ({}, {}),
    "no_arena": ({"enable_cpu_mem_arena": False}, {}),
    "no_prepack": ({}, {"session.disable_prepacking": "1"}),
    "no_mem_pattern": ({"enable_mem_pattern": False}, {}),
    "no_arena_no_pattern": ({"enable_cpu_mem_arena": False, "enable_mem_pattern": False}, {}),
    "lean": (
        {"enable_cpu_mem_arena": False, "enable_mem_pattern": False},
        {"session.disable_prepacking": "1"},
    ),
    # One arena for all the sessions (ONNX Runtime's environment allocator), growing by what is
    # asked (kSameAsRequested) or by powers of two (kNextPowerOfTwo, the per-session default).
    "shared_arena": ({}, {USE_ENV_ALLOCATORS: "1"}),
    "shared_arena_next_pow2": ({}, {USE_ENV_ALLOCATORS: "1"}),
}
#: Variant -> OrtArenaCfg arena_extend_strategy of the shared arena (0 kNextPowerOfTwo, 1 kSameAsRequested).
SHARED_ARENA_STRATEGY = {"shared_arena": 1, "shared_arena_next_pow2": 0}
LATENT_SCALE = 8  # the VAE's downscale (manifest vae_scale_factor on the families measured)


def memory_status() -> dict[str, int]:
    """VmRSS and VmHWM (peak) of this process, in bytes."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values


def open_component(folder: Path, name: str, spec: dict, attributes: dict, config: dict, threads: int):
    import onnxruntime as ort

    from sdrt.runtime.engines import ort_cache
    from sdrt.runtime.manifest import Manifest

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    for key, value in attributes.items():
        setattr(options, key, value)
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    component = Manifest.load(folder).components[name]
    entry = ort_cache.complete_entry(component) if ort_cache.enabled() else None
    if entry is not None:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        path = entry / ort_cache.MODEL_FILE
    else:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        path = folder / spec["file"]
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session, entry is not None


def zero_inputs(spec: dict, dims: dict, sizes: dict) -> dict[str, np.ndarray]:
    feeds = {}
    for tensor in spec["inputs"]:
        shape = [d if isinstance(d, int) else sizes.get(d, dims[d]["opt"] if d in dims else 1) for d in tensor["shape"]]
        feeds[tensor["name"]] = np.zeros(shape, dtype=np.dtype(tensor["dtype"]))
    return feeds


def child(args) -> dict:
    folder = Path(args.model)
    manifest = json.loads((folder / "manifest.json").read_text())
    attributes, config = VARIANTS[args.child]
    if args.child in SHARED_ARENA_STRATEGY:
        import onnxruntime as ort

        from sdrt.runtime.engines.ort_arena import NO_LIMIT, ORT_DEFAULT

        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        strategy = SHARED_ARENA_STRATEGY[args.child]
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(NO_LIMIT, strategy, ORT_DEFAULT, ORT_DEFAULT))
    report: dict = {"variant": args.child, "components": {}}
    sessions = {}
    for name in args.components.split(","):
        started = time.perf_counter()
        sessions[name], cached = open_component(
            folder, name, manifest["components"][name], attributes, config, args.threads
        )
        report["components"][name] = {
            "load_seconds": time.perf_counter() - started,
            "from_cache": cached,
            **{key.lower(): value for key, value in memory_status().items()},
        }
    first = args.components.split(",")[0]
    sizes = {
        "unet_batch": args.batch,
        "timestep_batch": args.batch,
        "batch": 1,  # images: the VAE and the text encoders
        "height": args.height,
        "width": args.width,
        "latent_height": args.height // LATENT_SCALE,
        "latent_width": args.width // LATENT_SCALE,
    }
    feeds = zero_inputs(manifest["components"][first], manifest["dims"], sizes)
    calls = []
    for _ in range(args.calls):
        started = time.perf_counter()
        sessions[first].run(None, feeds)
        calls.append(time.perf_counter() - started)
    report["call_seconds"] = calls
    report["others_seconds"] = {}
    for name in args.components.split(",")[1:]:  # each other component once, after (their arenas add up)
        started = time.perf_counter()
        sessions[name].run(None, zero_inputs(manifest["components"][name], manifest["dims"], sizes))
        report["others_seconds"][name] = time.perf_counter() - started
    report["after_call"] = {key.lower(): value for key, value in memory_status().items()}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--components", default="transformer", help="comma-separated; the first one is called")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--calls", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return
    results = []
    for variant in args.variants.split(","):
        command = [sys.executable, __file__, *sys.argv[1:], "--child", variant]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            results.append({"variant": variant, "error": done.stderr.strip().splitlines()[-1:]})
        else:
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        row = results[-1]
        if "error" in row:
            print(f"{variant:22s} failed: {row['error']}", flush=True)
            continue
        loads = ", ".join(
            f"{name} {c['load_seconds']:.1f} s (cache {c['from_cache']}) peak {c['vmhwm'] / 2**30:.2f} GiB"
            for name, c in row["components"].items()
        )
        calls = ", ".join(f"{s:.1f}" for s in row["call_seconds"])
        print(
            f"{variant:22s} {loads}; call {calls} s, peak {row['after_call']['vmhwm'] / 2**30:.2f} GiB, "
            f"RSS after {row['after_call']['vmrss'] / 2**30:.2f} GiB",
            flush=True,
        )
    if args.json:
        names = ("model", "components", "height", "width", "batch", "calls", "threads")
        settings = {name: getattr(args, name) for name in names}
        Path(args.json).write_text(json.dumps({"settings": settings, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
