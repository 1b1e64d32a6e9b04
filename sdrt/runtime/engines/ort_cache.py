"""A per-machine cache of ONNX Runtime's optimized CPU graphs, for fast cold starts.

Creating a CPU session at the highest optimization level rewrites the graph for this CPU
(blocked NCHWc convolution layouts, fused operators) and packs weights; for SD 1.5's fp32 UNet
that takes 11 to 22 s of the load. The first load on a machine saves the optimized graph;
later loads open it with optimizations off, in about 2 s, with the same outputs (steps measured
2 to 3% slower on SD 1.5; docs/benchmarks). The graph is specific to the CPU and ONNX Runtime
version that made it, so the cache key holds both, with the ONNX file's sha256 from the manifest.

Where: $SDRT_CACHE/ort (default ~/.cache/sdrt/ort), one folder per key. SDRT_ORT_CACHE=0 turns
it off. A cache that cannot be written (read-only, disk full) or read is skipped, never fatal.

An entry is trusted only while its files are the ones it was saved with: complete.json records
each file's size and sha256 when the entry is written, and every reuse checks them (the sha256
through sdrt.runtime.files.integrity's digest records, so an unchanged file is not read again).
An entry that does not match (a damaged or edited file) is rebuilt, with a one-line warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from sdrt.runtime.engines.onnxruntime import ORT_ERRORS_ONLY
from sdrt.runtime.files.integrity import file_sha256, record_sha256
from sdrt.runtime.files.leftovers import MARKER_FILE, make_temporary_dir, remove_stale, remove_temporary_dir, unmark
from sdrt.runtime.manifest import ComponentSpec

CACHE_ENV = "SDRT_CACHE"
SWITCH_ENV = "SDRT_ORT_CACHE"  # "0" turns the cache off
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
#: Why an entry saved by an older sdrt (its complete.json lists no files) is rebuilt, silently.
NO_RECORD = "it has no record of its files"
COMPLETE_FILE = "complete.json"  # written last: a folder without it is an interrupted save
# A save in progress: `.KEY.PID` beside the entries, marked as sdrt's temporary folder (removed
# if its process was killed).
STALE_STAGING = re.compile(r"\.[0-9a-f]+\.(?P<pid>\d+)")
# Initializers from this size go to the data file (small ones stay inline in the graph).
EXTERNAL_MIN_BYTES = 1024


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "sdrt"))


def enabled() -> bool:
    return os.environ.get(SWITCH_ENV, "1") != "0"


def cpu_identity() -> dict:
    """What an optimized CPU graph depends on: the instruction sets and the CPU model."""
    identity = {"machine": platform.machine(), "processor": platform.processor()}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "flags", "Features") and key not in identity:
                    identity[key] = " ".join(sorted(value.split())) if key != "model name" else value.strip()
    except OSError:
        pass
    return identity


def cache_key(spec: ComponentSpec, ort_version: str) -> str:
    payload = {
        "onnx_sha256": spec.sha256,
        "data_sha256": dict(spec.data_files),
        "onnxruntime": ort_version,
        "cpu": cpu_identity(),
        "level": "all",
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def entry_folder(spec: ComponentSpec) -> Path:
    """Where a component's optimized graph is (or would be) saved."""
    import onnxruntime as ort

    return cache_root() / "ort" / cache_key(spec, ort.__version__)


def _record_files(staging: Path) -> dict[str, dict]:
    """Name -> size and sha256 of each file of an entry being saved (recorded in the digest
    cache too, so the first reuse reads nothing again)."""
    return {
        path.name: {"size": path.stat().st_size, "sha256": record_sha256(path)}
        for path in sorted(staging.iterdir())
        if path.name not in (COMPLETE_FILE, MARKER_FILE) and path.is_file()  # the marker goes before it is kept
    }


def damage(folder: Path) -> str | None:
    """Why a saved entry cannot be trusted (a file changed or missing, or no record of its
    files: an entry from an older sdrt), or None when every file is as it was saved. Files
    added later (ort_overrides' placements record) are not the graph's and not checked."""
    try:
        record = json.loads((folder / COMPLETE_FILE).read_text(encoding="utf-8"))
        files = record.get("files") if isinstance(record, dict) else None
        if not isinstance(files, dict) or MODEL_FILE not in files:
            return NO_RECORD  # an older sdrt's entry: rebuilt without a word
        for name, saved in files.items():
            path = folder / name
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size != saved["size"] or file_sha256(path) != saved["sha256"]:
                return f"{name} changed after it was saved"
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"its record cannot be read ({type(error).__name__})"
    return None


def _trusted(folder: Path) -> bool:
    """Whether a complete entry may be used; a damaged one is removed, with a warning."""
    reason = damage(folder)
    if reason is None:
        return True
    if (folder / COMPLETE_FILE).is_file() and reason != NO_RECORD:
        print(
            f"warning: the optimized-graph cache entry {folder} is damaged ({reason}); rebuilding it", file=sys.stderr
        )
    shutil.rmtree(folder, ignore_errors=True)
    return False


def complete_entry(spec: ComponentSpec) -> Path | None:
    """The cache folder of a component's optimized graph, if one has been saved and its files
    are the ones saved."""
    folder = entry_folder(spec)
    return folder if (folder / COMPLETE_FILE).is_file() and _trusted(folder) else None


def cached_session(source: Path, spec: ComponentSpec, make_options: Callable, providers: list):
    """An InferenceSession for `source`: from the cached optimized graph when there is one,
    otherwise optimized now and saved for next time. `make_options()` gives fresh
    SessionOptions (threads etc.) at the highest optimization level."""
    import onnxruntime as ort

    folder = entry_folder(spec)
    remove_stale(folder.parent, STALE_STAGING)
    if (folder / COMPLETE_FILE).is_file() and _trusted(folder):
        options = make_options()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            return ort.InferenceSession(str(folder / MODEL_FILE), options, providers=providers)
        except Exception:  # a damaged cache entry: drop it and optimize again
            shutil.rmtree(folder, ignore_errors=True)
    staging = folder.with_name(f".{folder.name}.{os.getpid()}")
    options = make_options()
    made = False
    try:
        staging.parent.mkdir(parents=True, exist_ok=True)
        make_temporary_dir(staging)  # fails while another thread of this process saves this graph
        made = True
        options.optimized_model_filepath = str(staging / MODEL_FILE)
        # ONNX Runtime warns that a saved NCHWc graph is specific to this machine: this cache is
        # (its key names the machine), so the warning would only alarm users.
        options.log_severity_level = max(options.log_severity_level, ORT_ERRORS_ONLY)
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", DATA_FILE)
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", str(EXTERNAL_MIN_BYTES)
        )
        session = ort.InferenceSession(str(source), options, providers=providers)
        files = _record_files(staging)
        (staging / COMPLETE_FILE).write_text(
            json.dumps({"source": str(source), "sha256": spec.sha256, "files": files}), encoding="utf-8"
        )
        if folder.exists() and not (folder / COMPLETE_FILE).is_file():
            shutil.rmtree(folder, ignore_errors=True)  # an interrupted save
        try:
            unmark(staging)  # the entry is kept: no longer a temporary folder
            os.replace(staging, folder)
        except OSError:  # another process saved it first
            remove_temporary_dir(staging)
        return session
    except Exception:
        if made:
            remove_temporary_dir(staging)
        # Saving failed (no space, read-only cache): load as usual, without the cache.
        return ort.InferenceSession(str(source), make_options(), providers=providers)
