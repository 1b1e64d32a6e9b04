"""What switching LoRAs costs on an exported model (the full-size SD 1.5 architecture with random
weights, for instance): the merge, the session build with and without the optimized-graph
cache, a switch back to a cached set, and the memory each cached merged session holds.

    python benchmarks/lora_switch.py MODEL_DIR --json docs/benchmarks/cpu-sd15-lora-switch.json

Two random LoRAs of rank 16 (attention, feed-forward and projections of the UNet, and the text
encoder's attention and MLP, as kohya trains them) are written with NumPy from the export's
weights map. Each figure is the median of --runs repetitions, measured in this process.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from sdrt.benchmark import machine_info
from sdrt.runtime.features.lora.weights_map import WeightsMap, kohya_name
from sdrt.runtime.manifest import Manifest
from sdrt.runtime.pipeline import Pipeline

RANK = 16
TARGETS = re.compile(
    r"(attentions\.\d+\.(proj_in|proj_out|transformer_blocks\.\d+\.(attn[12]\.(to_q|to_k|to_v|"
    r"to_out\.0)|ff\.net\.(0\.proj|2))))$|(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$"
)
PREFIXES = {"unet": "lora_unet_", "text_encoder": "lora_te_text_model_"}
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE / 2**20


def write_lora(folder: Path, manifest: Manifest, path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    tensors = {}
    for component, prefix in PREFIXES.items():
        for module, mapped in WeightsMap.load(folder, component, manifest.components[component]).weights.items():
            if not TARGETS.search(module):
                continue
            out, inner = mapped.shape[0], int(np.prod(mapped.shape[1:]))
            down_shape = (RANK, *mapped.shape[1:]) if len(mapped.shape) == 4 else (RANK, inner)
            up_shape = (out, RANK, 1, 1) if len(mapped.shape) == 4 else (out, RANK)
            key = prefix + kohya_name(module)
            tensors[f"{key}.lora_down.weight"] = (rng.standard_normal(down_shape) * 0.01).astype(np.float16)
            tensors[f"{key}.lora_up.weight"] = (rng.standard_normal(up_shape) * 0.01).astype(np.float16)
            tensors[f"{key}.alpha"] = np.array(RANK / 2, np.float16)
    save_file(tensors, str(path))
    return path


def median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    folder = Path(args.model)
    manifest = Manifest.load(folder)
    work = Path(tempfile.mkdtemp(prefix="sdrt-lora-"))
    paths = [write_lora(folder, manifest, work / f"lora{seed}.safetensors", seed) for seed in range(2)]
    settings = dict(steps=1, seed=1, height=args.size, width=args.size)
    report: dict = {
        "model": str(folder),
        "machine": machine_info(),
        "rank": RANK,
        "runs": args.runs,
        "lora_file_mib": round(paths[0].stat().st_size / 2**20, 1),
    }

    started = time.perf_counter()
    # The default budget: every cached set holds a whole UNet session (3.4 GB for SD 1.5 fp32);
    # keeping all of them OOM-killed a first version of this script on 24 GiB.
    pipeline = Pipeline.load(folder)
    report["load_s"] = round(time.perf_counter() - started, 2)
    base = [pipeline.generate("a cat", **settings).timings["total"] for _ in range(args.runs)]
    report["one_step_image_base_s"] = median(base)

    # Merge alone (read, resolve, base + deltas), per component.
    from sdrt.runtime.features.lora.files import read_lora
    from sdrt.runtime.features.lora.merge import LoraWeights, merged_tensors, resolve

    maps = pipeline.loras.weights_maps()
    merges, touched = [], {}
    for _ in range(args.runs):
        begun = time.perf_counter()
        resolved = resolve(read_lora(paths[0]), maps)
        for component in resolved.layers:
            touched[component] = len(merged_tensors(component, [(resolved, LoraWeights())], maps[component]))
        merges.append(time.perf_counter() - begun)
    report["merge_s"] = median(merges)
    report["tensors_replaced"] = touched

    # First use of a set: merge + session builds (cached optimized graph: the fast path).
    switches, memory = [], []
    for index in range(args.runs):
        loras = [f"{paths[index % 2]}:{0.5 + index / 10}"]
        before = rss_mib()
        result = pipeline.generate("a cat", loras=loras, **settings)
        switches.append(result.timings["total"])
        memory.append(rss_mib() - before)
    report["one_step_image_new_lora_set_s"] = median(switches)
    report["new_set_cost_s"] = round(report["one_step_image_new_lora_set_s"] - report["one_step_image_base_s"], 3)
    report["rss_growth_per_new_set_mib"] = round(statistics.median(memory), 0)  # after eviction, from the 3rd
    sessions = pipeline.loras.variants("unet")._engines.values()
    report["unet_sessions_from_cached_graph"] = all(e.session.sdrt_from_cache for e in sessions)
    back = [
        pipeline.generate("a cat", loras=[f"{paths[0]}:0.5"], **settings).timings["total"] for _ in range(args.runs)
    ]
    report["one_step_image_cached_set_s"] = median(back)

    # The slow path: sessions optimized from the export with the merged weights in.
    os.environ["SDRT_ORT_CACHE"] = "0"
    slow = []
    for index in range(args.runs):
        result = pipeline.generate("a cat", loras=[f"{paths[index % 2]}:{0.9 + index / 10}"], **settings)
        slow.append(result.timings["total"])
    report["one_step_image_new_set_without_cache_s"] = median(slow)
    os.environ.pop("SDRT_ORT_CACHE")
    print(json.dumps(report, indent=2))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
