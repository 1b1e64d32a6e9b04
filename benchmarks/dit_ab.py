"""A/B of one SD3.5 Medium transformer call (batch 2) on ONNX Runtime's CPU provider: session
settings or rewritten graphs against the session sdrt opens (benchmarks/dit_profile.py's), each
in a process of its own, interleaved over `--rounds`, one warm-up call then `--calls` timed
calls per process. Reports each variant's median call, its peak RSS and the largest difference of
its output from the first variant's (the same inputs). Run it under `flock /work/locks/bigmem`.

    flock /work/locks/bigmem python benchmarks/dit_ab.py --variant default --variant no-spinning \
        --variant graph=/tmp/rewritten/model.onnx --json OUT

A `graph=PATH` variant is a rewritten copy of the export (its weights file beside it or linked),
optimized at load at ORT_ENABLE_ALL as sdrt's cache would optimize it once.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _profiling import in_process, print_report  # noqa: E402
from dit_profile import ONNX_FOLDER, inputs, ort_session  # noqa: E402

from sdrt.benchmark import machine_info  # noqa: E402
from sdrt.benchmark.worker import peak_rss_bytes  # noqa: E402


def _no_spinning(options) -> None:
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")


#: Session-option variants: name -> a change to the SessionOptions.
SETTINGS = {"default": None, "no-spinning": _no_spinning}


def run_variant(variant: str, folder: Path, height: int, width: int, calls: int, spinning: bool = True) -> dict:
    """One variant's session: load, a warm-up call, then `calls` timed calls (wall and this
    process's CPU seconds: on a shared machine the CPU time is the steadier measure of the work,
    when the threads do not spin, `spinning=False`)."""
    import onnxruntime as ort

    began = time.perf_counter()
    if variant.startswith("graph="):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not spinning:
            _no_spinning(options)
        session = ort.InferenceSession(variant.split("=", 1)[1], options, providers=["CPUExecutionProvider"])
    else:
        session, _ = ort_session(folder, None, SETTINGS[variant] if spinning else _no_spinning)
    load = time.perf_counter() - began
    (skip,) = [i.shape[0] for i in session.get_inputs() if i.name == "skip_layers"]
    feeds = {**inputs(height, width), "skip_layers": np.zeros(int(skip), np.float32)}
    began = time.perf_counter()
    session.run(None, feeds)  # warm-up (arena growth, first-touch of the packed weights)
    warmup = time.perf_counter() - began
    times, cpu, output = [], [], None
    for _ in range(calls):
        began, cpu_began = time.perf_counter(), time.process_time()
        output = session.run(None, feeds)[0]
        times.append(time.perf_counter() - began)
        cpu.append(time.process_time() - cpu_began)
    peak = peak_rss_bytes() / 2**30
    return {"load_s": load, "warmup_s": warmup, "call_s": times, "cpu_s": cpu, "peak_rss_gib": peak, "output": output}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", required=True, help=f"{', '.join(SETTINGS)} or graph=PATH")
    parser.add_argument("--onnx-folder", type=Path, default=ONNX_FOLDER)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--calls", type=int, default=2)
    parser.add_argument("--no-spinning", action="store_true", help="every variant's threads sleep when idle")
    parser.add_argument("--json", type=Path, default=None)
    arguments = parser.parse_args()
    for variant in arguments.variant:
        if not variant.startswith("graph=") and variant not in SETTINGS:
            parser.error(f"--variant: {variant!r} is none of {', '.join(SETTINGS)} or graph=PATH")
    results: dict[str, list[dict]] = {variant: [] for variant in arguments.variant}
    loads = [list(os.getloadavg())]
    for _ in range(arguments.rounds):
        for variant in arguments.variant:
            shape = {"height": arguments.height, "width": arguments.width}
            results[variant].append(
                in_process(
                    run_variant,
                    variant=variant,
                    folder=arguments.onnx_folder,
                    calls=arguments.calls,
                    spinning=not arguments.no_spinning,
                    **shape,
                )
            )
            print(variant, [round(t, 2) for t in results[variant][-1]["call_s"]], flush=True)
            loads.append(list(os.getloadavg()))
    reference = results[arguments.variant[0]][0]["output"]
    report: dict = {
        "machine": machine_info(),
        "command": " ".join(["python", "benchmarks/dit_ab.py", *sys.argv[1:]]),
        "image": [arguments.height, arguments.width],
        "load_averages": loads,
        "variants": {},
    }
    base = base_cpu = None
    for variant, runs in results.items():
        calls = [t for run in runs for t in run["call_s"]]
        cpu = [t for run in runs for t in run.get("cpu_s", [])]
        median = statistics.median(calls)
        base = base or median
        base_cpu = base_cpu or (statistics.median(cpu) if cpu else None)
        difference = max(float(np.abs(run["output"] - reference).max()) for run in runs)
        report["variants"][variant] = {
            "call_s": [round(t, 3) for t in calls],
            "call_s_median": round(median, 3),
            "speedup_vs_first": round(base / median, 3),
            "cpu_s": [round(t, 3) for t in cpu],
            "cpu_s_median": round(statistics.median(cpu), 3) if cpu else None,
            "cpu_speedup_vs_first": round(base_cpu / statistics.median(cpu), 3) if cpu and base_cpu else None,
            "load_s": [round(run["load_s"], 1) for run in runs],
            "warmup_call_s": [round(run["warmup_s"], 1) for run in runs],
            "peak_rss_gib": round(max(run["peak_rss_gib"] for run in runs), 2),
            "max_abs_diff_vs_first": difference,
            "max_abs_first": float(np.abs(reference).max()),
        }
    print_report(report, arguments.json)


if __name__ == "__main__":
    main()
