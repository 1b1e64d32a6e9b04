"""What the ONNX Runtime benchmarks share (ort_profile.py, dit_profile.py, dit_ab.py,
session_memory.py): a component's CPU session opened as sdrt opens it, the kernel times of a
session's last profiled run, times as shares of their total, a side run in a process of its
own, and the JSON report printed and written."""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

#: ONNX Runtime's profiler names a node's kernel event `<node name>_kernel_time`.
KERNEL_SUFFIX = "_kernel_time"


def cpu_session(folder: Path, spec: Any, options) -> tuple[Any, bool]:
    """The session of the component `spec` (a ComponentSpec) of the export in `folder` as sdrt's
    CPU backend opens it: the cached optimized graph, optimizations off, when
    sdrt.runtime.engines.ort_cache holds one, else the export at the highest level. `options`
    (SessionOptions) get the optimization level. Returns (session, whether from the cache)."""
    import onnxruntime as ort

    from sdrt.runtime.engines import ort_cache

    entry = ort_cache.complete_entry(spec) if ort_cache.enabled() else None
    if entry is not None:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        path = entry / ort_cache.MODEL_FILE
    else:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        path = Path(folder) / spec.file
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]), entry is not None


def kernel_times(events: list[dict]) -> Iterator[tuple[str, str, float]]:
    """(node name, operator type, seconds) of each kernel of the last `model_run` in ONNX
    Runtime's profile `events` (a profile holds every run: the warm-up's too)."""
    runs = [event for event in events if event.get("name") == "model_run"]
    start = runs[-1]["ts"] if runs else 0
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith(KERNEL_SUFFIX) or event["ts"] < start:
            continue
        yield event["name"][: -len(KERNEL_SUFFIX)], event["args"]["op_name"], event["dur"] / 1e6


def shares(times: dict[str, float], top: int | None = None) -> dict[str, dict[str, float]]:
    """Each entry's seconds and share of the total, largest first (the `top` largest)."""
    total = sum(times.values()) or 1.0
    ordered = sorted(times.items(), key=lambda item: -item[1])[:top]
    return {name: {"s": round(value, 3), "share": round(value / total, 4)} for name, value in ordered}


def _worker(function: Callable, arguments: dict, pipe) -> None:
    pipe.send(function(**arguments))


def in_process(function: Callable, **arguments):
    """`function(**arguments)` in a fresh (spawned) process, so that its peak RSS is its own;
    `function` must be importable by name (a module-level function)."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_worker, args=(function, arguments, child))
    process.start()
    result = parent.recv()
    process.join()
    return result


def print_report(report: dict, path: Path | None) -> None:
    """The report as JSON on stdout and, given a path, in that file."""
    text = json.dumps(report, indent=2)
    print(text)
    if path:
        path.write_text(text + "\n")
