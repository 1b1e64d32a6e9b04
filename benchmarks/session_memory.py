"""Peak resident memory and call time of ONNX Runtime sessions of exported models, per session option.

    PYTHONPATH=$PWD python benchmarks/session_memory.py [NAME=]MODEL_FOLDER [...] [--components unet]
        [--height 512 --width 512 --batch 2] [--variants default,no_arena,...] [--rounds 1] [--json OUT]

Each (model, variant) pair runs in a fresh process of its own (so each peak is its own), one at a
time, the pairs in turn, round after round (A B C ... A B C ...). A process opens the components as
sdrt's CPU backend does (the cached optimized graph when sdrt.runtime.engines.ort_cache has one,
with optimizations off; else the exported graph at the highest level), with the variant's options,
and reports the load time and the peak RSS (VmHWM) after loading, then the time and peak of
`--calls` calls of the first component with seeded random inputs at the given size (batch = the
denoiser's batch, 2 with classifier-free guidance; the first call is the warm-up), then of each
other component once. The first component's output is compared with the first pair's (two
models: e.g. a plain and a --fused-attention export of the same weights). Options tried (ONNX
Runtime's SessionOptions and session config keys): the CPU memory arena off, MatMul weight
prepacking off, the memory pattern planner off, one arena shared by all the sessions.

    PYTHONPATH=$PWD python benchmarks/session_memory.py plain=~/.cache/sdrt/arch/sd15-onnx-fp32 \
        fused=/tmp/sd15-fused --components unet --variants default,no_arena --calls 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _profiling import cpu_session  # noqa: E402

from sdrt.runtime.engines.ort_arena import USE_ENV_ALLOCATORS  # noqa: E402

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
SEED = 0
GIB = 2**30


def memory_status() -> dict[str, int]:
    """VmRSS and VmHWM (peak) of this process, in bytes."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values


def open_component(folder: Path, name: str, attributes: dict, config: dict, threads: int):
    import onnxruntime as ort

    from sdrt.runtime.manifest import Manifest

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    for key, value in attributes.items():
        setattr(options, key, value)
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    return cpu_session(folder, Manifest.load(folder).components[name], options)


def inputs_for(spec: dict, dims: dict, sizes: dict) -> dict[str, np.ndarray]:
    """Seeded standard-normal floats (the same in every process) and zero integers (token ids)."""
    rng, feeds = np.random.default_rng(SEED), {}
    for tensor in spec["inputs"]:
        shape = [d if isinstance(d, int) else sizes.get(d, dims[d]["opt"] if d in dims else 1) for d in tensor["shape"]]
        dtype = np.dtype(tensor["dtype"])
        floating = np.issubdtype(dtype, np.floating)
        feeds[tensor["name"]] = rng.standard_normal(shape).astype(dtype) if floating else np.zeros(shape, dtype)
    return feeds


def child(args) -> dict:
    folder = Path(args.child_model)
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
        sessions[name], cached = open_component(folder, name, attributes, config, args.threads)
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
    feeds = inputs_for(manifest["components"][first], manifest["dims"], sizes)
    calls = []
    for _ in range(args.calls):
        started = time.perf_counter()
        output = sessions[first].run(None, feeds)[0]
        calls.append(time.perf_counter() - started)
    np.save(args.child_output, output)
    report["call_seconds"] = calls
    report["others_seconds"] = {}
    for name in args.components.split(",")[1:]:  # each other component once, after (their arenas add up)
        started = time.perf_counter()
        sessions[name].run(None, inputs_for(manifest["components"][name], manifest["dims"], sizes))
        report["others_seconds"][name] = time.perf_counter() - started
    report["after_call"] = {key.lower(): value for key, value in memory_status().items()}
    return report


def named_models(texts: list[str]) -> dict[str, Path]:
    """`NAME=FOLDER` or `FOLDER` (named after the folder) -> {name: folder}."""
    named = {}
    for text in texts:
        name, _, folder = text.rpartition("=")
        named[name or Path(folder).name] = Path(folder).expanduser()
    return named


#: The settings a child process is given (its own flags).
CHILD_SETTINGS = ("components", "height", "width", "batch", "calls", "threads")


def run_child(args, folder: Path, variant: str, output: Path) -> dict:
    settings = [text for name in CHILD_SETTINGS for text in (f"--{name}", str(getattr(args, name)))]
    command = [sys.executable, __file__, *settings, "--child", variant, "--child-model", str(folder)]
    done = subprocess.run([*command, "--child-output", str(output)], capture_output=True, text=True)
    if done.returncode != 0:
        return {"variant": variant, "error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def summary(rows: list[dict], outputs: dict[str, np.ndarray]) -> dict:
    """Per (model, variant): the calls after the warm-up, their median, the largest peak, and the
    output's largest change against the first pair's, relative to its largest value."""
    reference = next(iter(outputs.values()), None)
    table: dict[str, dict] = {}
    for key in dict.fromkeys(f"{row['model']}:{row['variant']}" for row in rows if "error" not in row):
        mine = [row for row in rows if f"{row['model']}:{row['variant']}" == key and "error" not in row]
        calls = [seconds for row in mine for seconds in row["call_seconds"][1:]] or [mine[0]["call_seconds"][0]]
        table[key] = {
            "call_s_median": round(statistics.median(calls), 2),
            "peak_rss_gib": round(max(row["after_call"]["vmhwm"] for row in mine) / GIB, 2),
            "load_average_1min": [row["load_average_1min"] for row in mine],
            "max_rel_change_vs_first": float(np.abs(outputs[key] - reference).max() / np.abs(reference).max()),
        }
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="export folders, NAME=FOLDER to name one")
    parser.add_argument("--components", default="transformer", help="comma-separated; the first one is called")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--calls", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1, help="rounds over all (model, variant) pairs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-model", help=argparse.SUPPRESS)
    parser.add_argument("--child-output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return
    models = named_models(args.models)
    if not models or any(variant not in VARIANTS for variant in args.variants.split(",")):
        parser.error(f"give at least one export folder, and variants among {', '.join(VARIANTS)}")
    results, outputs = [], {}
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(args.rounds):
            for name, folder in models.items():
                for variant in args.variants.split(","):
                    output = Path(scratch) / "output.npy"
                    row = dict(run_child(args, folder, variant, output), model=name, round=round_index)
                    row["load_average_1min"] = round(os.getloadavg()[0], 2)
                    results.append(row)
                    if "error" in row:
                        print(f"{name}:{variant:22s} failed: {row['error']}", flush=True)
                        continue
                    outputs.setdefault(f"{name}:{variant}", np.load(output))
                    print_row(name, row)
    report = {"summary": summary(results, outputs), "results": results}
    print(json.dumps(report["summary"], indent=2))
    if args.json:
        settings = {"models": {name: str(folder) for name, folder in models.items()}, "rounds": args.rounds}
        settings.update({name: getattr(args, name) for name in CHILD_SETTINGS})
        command = " ".join(["python", "benchmarks/session_memory.py", *sys.argv[1:]])
        Path(args.json).write_text(json.dumps({"command": command, "settings": settings, **report}, indent=2) + "\n")


def print_row(name: str, row: dict) -> None:
    loads = ", ".join(
        f"{component} {c['load_seconds']:.1f} s (cache {c['from_cache']}) peak {c['vmhwm'] / GIB:.2f} GiB"
        for component, c in row["components"].items()
    )
    calls = ", ".join(f"{s:.1f}" for s in row["call_seconds"])
    print(
        f"{name}:{row['variant']:22s} {loads}; call {calls} s, peak {row['after_call']['vmhwm'] / GIB:.2f} GiB, "
        f"RSS after {row['after_call']['vmrss'] / GIB:.2f} GiB, load average {row['load_average_1min']}",
        flush=True,
    )


if __name__ == "__main__":
    main()
