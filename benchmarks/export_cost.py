"""Time and memory of one `sdrt export`, as JSON: wall time, the export process's peak resident
set (file-backed pages of memory-mapped weights included) and the machine's peak memory in use
(sampled from /proc/meminfo: MemTotal - MemAvailable), with each progress line and its time.

    python benchmarks/export_cost.py /tmp/sdxl-full --out /tmp/sdxl-fp16 --precision fp16 \\
        --json docs/benchmarks/cpu-sdxl-export-fp16.json

Build the random full-size SDXL base first with
`python -c "from sdrt.export.random_sdxl import save_random_sdxl as s; s('/tmp/sdxl-full', size='full')"`.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

SAMPLE_SECONDS = 2.0
KIB = 1024


def used_bytes() -> int:
    fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    kib = int(fields["MemTotal"].split()[0]) - int(fields["MemAvailable"].split()[0])
    return kib * KIB


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("--out", required=True)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()
    peak = [used_bytes()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(SAMPLE_SECONDS):
            peak[0] = max(peak[0], used_bytes())

    threading.Thread(target=sample, daemon=True).start()
    started = time.perf_counter()
    command = [
        sys.executable,
        "-m",
        "sdrt.cli",
        "export",
        args.source,
        "--out",
        args.out,
        "--precision",
        args.precision,
        "--overwrite",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in process.stdout:
        lines.append({"seconds": round(time.perf_counter() - started, 1), "line": line.rstrip()})
        print(line, end="", flush=True)
    code = process.wait()
    done.set()
    report = {
        "command": " ".join(command[1:]),
        "exit_code": code,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * KIB,
        "peak_machine_used_bytes": peak[0],
        "machine": {"cpu": cpu_name(), "memory_bytes": int(Path("/proc/meminfo").read_text().split()[1]) * KIB},
        "progress": [entry for entry in lines if "it/s]" not in entry["line"] and entry["line"]],
    }
    print(json.dumps({k: v for k, v in report.items() if k != "progress"}))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
