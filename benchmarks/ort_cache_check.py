"""What checking an optimized-graph cache entry's digest adds to a warm load: the UNet of an
export (warm loads with and without the check), and a 500 MB entry made here (the check while
its files are unchanged since their digests were recorded, and after their stamp changed, when
each file is hashed again).

    python benchmarks/ort_cache_check.py MODEL_DIR

Each figure is the median of --runs repetitions, in a private cache folder ($SDRT_CACHE is set
to a temporary one), measured in this process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

BIG_BYTES = 500 * 10**6
BLOCK_BYTES = 10 * 10**6


def median_seconds(function, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--runs", type=int, default=7)
    arguments = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="sdrt-cache-check-"))
    os.environ["SDRT_CACHE"] = str(scratch / "cache")

    from sdrt.runtime.engines import ort_cache
    from sdrt.runtime.engines.onnxruntime import OrtEngine
    from sdrt.runtime.files import integrity
    from sdrt.runtime.manifest import Manifest

    manifest = Manifest.load(arguments.model_dir)
    spec = manifest.components["unet"]

    def load():
        return OrtEngine(arguments.model_dir / spec.file, "unet", spec, manifest.dims)

    load()  # saves the entry
    entry = ort_cache.entry_folder(spec)
    checked = median_seconds(load, arguments.runs)
    trusted = ort_cache._trusted
    ort_cache._trusted = lambda folder: True
    unchecked = median_seconds(load, arguments.runs)
    ort_cache._trusted = trusted
    check = median_seconds(lambda: ort_cache.damage(entry), arguments.runs)
    entry_mb = sum(path.stat().st_size for path in entry.iterdir()) / 1e6
    print(f"UNet warm load: {checked * 1e3:.1f} ms checked, {unchecked * 1e3:.1f} ms unchecked; the check alone")
    print(f"  {check * 1e3:.2f} ms (entry of {entry_mb:.1f} MB)")

    big = scratch / "big"
    big.mkdir()
    with open(big / ort_cache.DATA_FILE, "wb") as handle:
        for _ in range(BIG_BYTES // BLOCK_BYTES):
            handle.write(os.urandom(BLOCK_BYTES))
    (big / ort_cache.MODEL_FILE).write_bytes(b"graph")
    files = {p.name: {"size": p.stat().st_size, "sha256": integrity.record_sha256(p)} for p in big.iterdir()}
    (big / ort_cache.COMPLETE_FILE).write_text(json.dumps({"files": files}))
    unchanged = median_seconds(lambda: ort_cache.damage(big), arguments.runs)

    def restamped():
        for path in big.iterdir():
            os.utime(path)  # a new stamp: the digest record no longer applies
        assert ort_cache.damage(big) is None

    rehashed = median_seconds(restamped, max(1, arguments.runs // 2))
    shutil.rmtree(scratch, ignore_errors=True)
    print(
        f"{BIG_BYTES / 1e6:.0f} MB entry: {unchanged * 1e3:.2f} ms unchanged, {rehashed:.2f} s once its stamp changed"
    )


if __name__ == "__main__":
    main()
