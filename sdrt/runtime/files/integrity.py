"""Is each file of a model folder the one its manifest describes? Checked at load.

Every graph file (and external data file) is compared with the sha256 the exporter wrote, so a
truncated, emptied, garbled or swapped file is one clear error, and the optimized-graph and
TensorRT caches (keyed by that sha256) can never serve a model that is no longer there.

Hashing SD 1.5's fp32 UNet (3.4 GB) takes seconds, so a file's digest is remembered in
$SDRT_CACHE/digests/, keyed by the file's device and inode, and reused while its size,
modification and status-change times are unchanged (the fast path); any change hashes it again. The exporter
records the digests it computes, so the first load of a fresh export hashes nothing. A cache
that cannot be read or written only costs the hashing.

The engines' real inputs and outputs are checked against the manifest too (check_graph_io),
so a graph that does not fit its manifest fails at load, before any step runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

from sdrt.errors import ModelFolderError
from sdrt.runtime.files.leftovers import make_temporary_dir, remove_stale, remove_temporary_dir
from sdrt.runtime.manifest import Manifest, TensorSpec
from sdrt.runtime.manifest_checks import confined_path

DIGEST_DIR = "digests"
CHUNK_BYTES = 16 * 2**20
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
SHORT_DIGEST = 12  # hex digits quoted in messages
# A record being written: in the temporary folder `.DEV-INO.json.PID` (sdrt.runtime.files.leftovers).
STALE_RECORD = re.compile(r"\.[0-9]+-[0-9]+\.json\.(?P<pid>\d+)")


def _cache_dir() -> Path:
    from sdrt.runtime.engines.ort_cache import cache_root

    return cache_root() / DIGEST_DIR


def _stamp(stat: os.stat_result) -> dict:
    """What changes whenever the file's content does. The status-change time cannot be set
    back by a user (unlike the modification time), so an in-place edit is always noticed."""
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns}


def _record_path(stat: os.stat_result) -> Path:
    return _cache_dir() / f"{stat.st_dev}-{stat.st_ino}.json"


def hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def remember(path: Path, sha256: str, stat: os.stat_result | None = None) -> None:
    """Record `path`'s digest for the fast path (skipped if the cache cannot be written)."""
    stat = stat or path.stat()
    record = _record_path(stat)
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(record.parent, STALE_RECORD)
        staging = make_temporary_dir(record.with_name(f".{record.name}.{os.getpid()}"))
    except OSError:
        return
    try:
        (staging / record.name).write_text(json.dumps({"stamp": _stamp(stat), "sha256": sha256}), encoding="utf-8")
        os.replace(staging / record.name, record)
    except OSError:
        pass
    finally:
        remove_temporary_dir(staging)


def record_sha256(path: Path) -> str:
    """Hash a file just written (the exporter's) and record it, so its first load hashes nothing."""
    sha256 = hash_file(path)
    remember(path, sha256)
    return sha256


def file_sha256(path: Path) -> str:
    """The sha256 of `path`, from the digest cache while the file's stamp is unchanged."""
    stat = path.stat()
    try:
        record = json.loads(_record_path(stat).read_text(encoding="utf-8"))
        if (
            isinstance(record, dict)
            and record.get("stamp") == _stamp(stat)
            and isinstance(record.get("sha256"), str)
            and SHA256_HEX.fullmatch(record["sha256"])
        ):
            return record["sha256"]
    except (OSError, ValueError):
        pass
    sha256 = hash_file(path)
    after = path.stat()
    if _stamp(after) == _stamp(stat):  # unchanged while it was read
        remember(path, sha256, after)
    return sha256


def check_file(folder: Path, relative: str, expected: str, what: str) -> Path:
    """The path of a manifest's file, checked to be inside `folder` and to have the digest
    `expected` (unchecked when the manifest has none: folders exported elsewhere)."""
    path = confined_path(folder, relative, what)
    if not path.is_file():
        raise ModelFolderError(f"{path} is missing; re-export the model")
    if not expected:
        return path
    if path.stat().st_size == 0:
        raise ModelFolderError(f"{path} is empty; re-export the model")
    try:
        actual = file_sha256(path)
    except OSError as error:
        raise ModelFolderError(f"cannot read {path}: {error.strerror or error}") from None
    if actual != expected:
        raise ModelFolderError(
            f"{path} is not the file manifest.json describes (sha256 {actual[:SHORT_DIGEST]}..., expected "
            f"{expected[:SHORT_DIGEST]}...): it changed after export; re-export the model"
        )
    return path


def verify_components(folder: Path, manifest: Manifest, names: Iterable[str]) -> None:
    """Each named component's graph and data files, checked with check_file."""
    for name in names:
        spec = manifest.components[name]
        check_file(folder, spec.file, spec.sha256, f"components.{name}.file")
        for relative, sha256 in spec.data_files.items():
            check_file(folder, relative, sha256, f"components.{name}.data_files")


def check_graph_io(
    component: str,
    expected_inputs: list[TensorSpec],
    expected_outputs: list[TensorSpec],
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
) -> None:
    """The graph's tensors against the manifest's: the same names, dtypes and ranks, and equal
    sizes where both fix one. A mismatch is one ModelFolderError naming the tensor."""
    for kind, expected, actual in (("inputs", expected_inputs, inputs), ("outputs", expected_outputs, outputs)):
        have = {tensor.name: tensor for tensor in actual}
        want = {tensor.name: tensor for tensor in expected}
        if set(have) != set(want):
            raise ModelFolderError(
                f"the {component} graph's {kind} are {sorted(have)}, manifest.json says "
                f"{sorted(want)}; re-export the model"
            )
        for name, spec in want.items():
            graph = have[name]
            if (
                graph.dtype != spec.dtype
                or len(graph.shape) != len(spec.shape)
                or any(isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(graph.shape, spec.shape))
            ):
                raise ModelFolderError(
                    f"the {component} graph's {name} is {graph.dtype} {graph.shape}, manifest.json "
                    f"says {spec.dtype} {spec.shape}; re-export the model"
                )
