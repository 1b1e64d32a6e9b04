"""A full-size SD 1.5 UNet (random weights) in fp32, int8 and int4 MatMul weights, without a
whole export: the UNet alone is traced to ONNX, quantized as `sdrt export --weights` does
(sdrt.export.quantize), and each graph's file size, session load time, one call's time
(batch 2: classifier-free guidance, 64x64 latents = 512x512) and output change against the fp32
graph are measured. Medians of --runs calls after one warm-up.

    python benchmarks/quantization_unet.py --work /tmp/sd15-unet --json docs/benchmarks/cpu-sd15-unet-quantization.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ort_profile import trace  # noqa: E402

from sdrt.benchmark import machine_info  # noqa: E402
from sdrt.export import onnx_graph  # noqa: E402
from sdrt.export.quantize import PLAIN_OP, QUANTIZED_OP, WEIGHT_FORMATS, quantize_model  # noqa: E402

BATCH, LATENT, TEXT_LENGTH, SEED = 2, 64, 77, 0
BLOCK = 32
MIB = 2**20


def size_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.parent.iterdir()) / MIB


def measure(path: Path, feeds: dict, runs: int) -> tuple[dict, np.ndarray]:
    started = time.perf_counter()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    load = time.perf_counter() - started
    output = session.run(None, feeds)[0]
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - began)
    return {"mib": round(size_mib(path), 1), "load_s": load, "call_s": statistics.median(times)}, output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    arguments = parser.parse_args()
    fp32 = arguments.work / "fp32" / "model.onnx"
    if not fp32.exists():
        trace(fp32, LATENT, classic_attention=False)
    paths = {"fp32": fp32}
    counts = {}
    for name, bits in WEIGHT_FORMATS.items():
        paths[name] = arguments.work / name / "model.onnx"
        if not paths[name].exists():
            paths[name].parent.mkdir(parents=True, exist_ok=True)
            quantized = quantize_model(onnx.load_model(str(fp32)), bits, BLOCK)
            onnx_graph.save(quantized, paths[name])
            del quantized
        graph = onnx.load_model(str(paths[name]), load_external_data=False).graph
        counts[name] = {op: sum(n.op_type == op for n in graph.node) for op in (QUANTIZED_OP, PLAIN_OP)}
    rng = np.random.default_rng(SEED)
    feeds = {
        "sample": rng.standard_normal((BATCH, 4, LATENT, LATENT), dtype=np.float32),
        "timestep": np.array([500.0], np.float32),
        "encoder_hidden_states": rng.standard_normal((BATCH, TEXT_LENGTH, 768), dtype=np.float32),
    }
    rows, reference = {}, None
    for name, path in paths.items():
        row, output = measure(path, feeds, arguments.runs)
        reference = output if reference is None else reference
        row["max_rel_change"] = float(np.abs(output - reference).max() / np.abs(reference).max())
        row["rms_rel_change"] = float(np.sqrt(np.mean((output - reference) ** 2) / np.mean(reference**2)))
        row["ops"] = counts.get(name)
        rows[name] = row
        print(name, json.dumps(row), flush=True)
    if arguments.json:
        report = {"machine": machine_info(), "batch": BATCH, "latent": LATENT, "block": BLOCK, "rows": rows}
        arguments.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
