"""Peak memory and call time of one UNet graph under ONNX Runtime's CPU session options: its
memory arena (`enable_cpu_mem_arena`), the memory pattern planner (`enable_mem_pattern`) and
weight prepacking (`session.disable_prepacking`), for the plain graph and the `--fused-attention`
one. Each (graph, options) pair runs in a fresh process of its own, one process at a time, so
that each peak RSS is its own; the pairs run in turn, round after round (A B C ... A B C ...).

Per process: the session is built (high-water RSS after loading: the weights, prepacked), one
warm-up call, then `--calls` timed calls; the peak RSS over the whole process (ru_maxrss).

    python benchmarks/ort_memory.py --plain ~/.cache/sdrt/arch/sd15-onnx-fp32/unet/model.onnx \
        --fused /tmp/sd15-fused/unet/model.onnx --latent 64 \
        --json docs/benchmarks/cpu-sd15-512-ort-memory.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from backend_unet import feeds  # noqa: E402

from sdrt.benchmark import machine_info  # noqa: E402
from sdrt.benchmark.worker import peak_rss_bytes  # noqa: E402

GIB = 2**30
#: The session options tried: name -> (enable_cpu_mem_arena, enable_mem_pattern, disable_prepacking).
#: "default" is ONNX Runtime's (and sdrt's before this measurement).
VARIANTS = {
    "default": (True, True, False),
    "no-arena": (False, True, False),
    "no-mem-pattern": (True, False, False),
    "no-arena-no-pattern": (False, False, False),
    "no-prepack": (True, True, True),
}
DEFAULT_RUNS = "plain:default,plain:no-arena,plain:no-prepack,fused:default,fused:no-arena,fused:no-arena-no-pattern"


def worker(graph: str, variant: str, latent: int, calls: int, pipe) -> None:
    import onnxruntime as ort

    arena, pattern, no_prepack = VARIANTS[variant]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_cpu_mem_arena = arena
    options.enable_mem_pattern = pattern
    if no_prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    began = time.perf_counter()
    session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    load_s, load_peak = time.perf_counter() - began, peak_rss_bytes()
    names = {tensor.name for tensor in session.get_inputs()}
    values = {name: value for name, value in feeds(latent).items() if name in names}
    began = time.perf_counter()
    session.run(None, values)
    warm_s = time.perf_counter() - began
    times, output = [], None
    for _ in range(calls):
        began = time.perf_counter()
        output = session.run(None, values)[0]
        times.append(time.perf_counter() - began)
    pipe.send({"load_s": load_s, "warmup_s": warm_s, "call_s": times, "load_peak": load_peak, "peak": peak_rss_bytes()})
    pipe.send(output)


def run_one(graph: Path, variant: str, latent: int, calls: int) -> tuple[dict, np.ndarray]:
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=worker, args=(str(graph), variant, latent, calls, child))
    process.start()
    result, output = parent.recv(), parent.recv()
    process.join()
    return result, output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plain", type=Path, required=True, help="the UNet ONNX as exported")
    parser.add_argument("--fused", type=Path, default=None, help="the --fused-attention UNet ONNX")
    parser.add_argument("--latent", type=int, default=64, help="latent side (64 = 512x512)")
    parser.add_argument("--runs", default=DEFAULT_RUNS, help=f"graph:variant pairs; variants: {', '.join(VARIANTS)}")
    parser.add_argument("--rounds", type=int, default=1, help="rounds over all pairs (interleaved)")
    parser.add_argument("--calls", type=int, default=1, help="timed calls per process after the warm-up")
    parser.add_argument("--json", type=Path, default=None)
    arguments = parser.parse_args()
    graphs = {"plain": arguments.plain, "fused": arguments.fused}
    pairs = [tuple(pair.split(":")) for pair in arguments.runs.split(",") if pair]
    for graph, variant in pairs:
        if graphs.get(graph) is None or variant not in VARIANTS:
            parser.error(
                f"unknown pair {graph}:{variant} (graphs: plain, fused with --fused; variants: {list(VARIANTS)})"
            )
    results: dict[str, list[dict]] = {f"{g}:{v}": [] for g, v in pairs}
    outputs: dict[str, np.ndarray] = {}
    for _ in range(arguments.rounds):
        for graph, variant in pairs:
            key = f"{graph}:{variant}"
            result, outputs[key] = run_one(graphs[graph], variant, arguments.latent, arguments.calls)
            results[key].append(result)
            print(key, json.dumps(result), flush=True)
    reference = outputs[f"{pairs[0][0]}:{pairs[0][1]}"]
    report: dict = {
        "machine": machine_info(),
        "command": " ".join(["python", "benchmarks/ort_memory.py", *sys.argv[1:]]),
        "note": "one fresh process per (graph, options), in turn; a shared 2-core machine: compare the ratios",
        "image": arguments.latent * 8,
        "runs": {},
    }
    for key, entries in results.items():
        calls = [seconds for entry in entries for seconds in entry["call_s"]]
        report["runs"][key] = {
            "call_s": [round(value, 2) for value in calls],
            "call_s_median": round(statistics.median(calls), 2),
            "warmup_s": [round(entry["warmup_s"], 1) for entry in entries],
            "load_s": [round(entry["load_s"], 1) for entry in entries],
            "peak_after_load_gib": round(max(entry["load_peak"] for entry in entries) / GIB, 2),
            "peak_rss_gib": round(max(entry["peak"] for entry in entries) / GIB, 2),
            "max_rel_change_vs_first": float(np.abs(outputs[key] - reference).max() / np.abs(reference).max()),
        }
    text = json.dumps(report, indent=2)
    print(text)
    if arguments.json:
        arguments.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
