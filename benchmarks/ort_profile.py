"""Where a UNet call's time goes on ONNX Runtime's CPU provider: its profiler's kernel times,
summed per operator type and per UNet block (read from the node names torch.onnx gives:
`/unet/down_blocks.1/attentions.0/...` -> `down_blocks.1`), as shares of the profiled total.

The UNet is the full-size SD 1.5 one (random weights, fp32) traced as `sdrt export` traces it
(diffusers' classic AttnProcessor: explicit MatMul + Softmax), or any UNet ONNX given with
--onnx. --fused also profiles the graph after onnxruntime.transformers' UNet fusions for the
CPU (MultiHeadAttention; sdrt.export.onnx_graph.fuse_attention_for_cpu), interleaved with the
plain one. Timings on a shared machine are noisy: read the shares, not the seconds.

    python benchmarks/ort_profile.py --work /tmp/sd15-profile --latent 32 --fused \
        --json docs/benchmarks/cpu-sd15-256-ort-profile.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _profiling import in_process, kernel_times, print_report, shares  # noqa: E402

from sdrt.benchmark import machine_info  # noqa: E402
from sdrt.benchmark.worker import peak_rss_bytes  # noqa: E402

BATCH, TEXT_LENGTH, CONTEXT_WIDTH, IN_CHANNELS, SEED = 2, 77, 768, 4, 0
TIMESTEP = 500.0
BLOCK_PREFIXES = ("down_blocks", "up_blocks", "mid_block")
TOP_OPS = 12


def trace(path: Path, latent: int, classic_attention: bool = True) -> Path:
    """The full-size SD 1.5 UNet (random weights) traced to ONNX at batch BATCH, `latent`^2, its
    attention as `sdrt export` traces it (classic: explicit MatMul + Softmax) or as diffusers'
    default processor (scaled_dot_product_attention)."""
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor

    from sdrt.export.random_model import SD15_PRESET

    torch.manual_seed(SEED)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD15_PRESET / "unet")).eval()
    if classic_attention:
        unet.set_attn_processor(AttnProcessor())

    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, context):
            return self.unet(sample, timestep, context, return_dict=False)[0]

    sample = torch.randn(BATCH, IN_CHANNELS, latent, latent)
    context = torch.randn(BATCH, TEXT_LENGTH, CONTEXT_WIDTH)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Plain(),
            (sample, torch.tensor([TIMESTEP]), context),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["sample", "timestep", "encoder_hidden_states"],
            output_names=["out_sample"],
        )
    return path


def block_of(node_name: str) -> str:
    """`/unet/down_blocks.1/attentions.0/...` -> `down_blocks.1`; `mid_block`; else the first
    named part (conv_in, time_embedding...) or `other` for nodes ONNX Runtime named itself."""
    parts = [part for part in node_name.split("/") if part and part != "unet"]
    for index, part in enumerate(parts):
        if part.startswith(BLOCK_PREFIXES):
            return part if part == "mid_block" or "." in part else ".".join(parts[index : index + 2])
    return parts[0] if len(parts) > 1 else "other"


def feeds_for(session: ort.InferenceSession, latent: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    names = {i.name for i in session.get_inputs()}
    feeds = {
        "sample": rng.standard_normal((BATCH, IN_CHANNELS, latent, latent), dtype=np.float32),
        "timestep": np.array([TIMESTEP], np.float32),
        "encoder_hidden_states": rng.standard_normal((BATCH, TEXT_LENGTH, CONTEXT_WIDTH), dtype=np.float32),
    }
    return {name: value for name, value in feeds.items() if name in names}


def profile(path: Path, latent: int) -> tuple[dict, np.ndarray, float, int]:
    """One warm-up, then one profiled call; the kernel times per op type and per block, the
    output, the profiled call's wall time and the process's peak RSS in bytes (run it in a
    process of its own: `_profiling.in_process`)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as folder:
        options.profile_file_prefix = str(Path(folder) / "ort")
        profiled = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feeds = feeds_for(profiled, latent)
        profiled.run(None, feeds)  # warm-up
        began = time.perf_counter()
        output = profiled.run(None, feeds)[0]
        wall = time.perf_counter() - began
        events = json.loads(Path(profiled.end_profiling()).read_text())
    by_op: dict[str, float] = defaultdict(float)
    by_block: dict[str, float] = defaultdict(float)
    for node, op, seconds in kernel_times(events):  # the profiled call's: the profile holds both
        by_op[op] += seconds
        by_block[block_of(node)] += seconds
    peak = peak_rss_bytes()
    return {"op": dict(by_op), "block": dict(by_block)}, output, wall, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="folder for the traced graphs")
    parser.add_argument("--onnx", type=Path, default=None, help="a UNet ONNX to profile instead of tracing one")
    parser.add_argument("--latent", type=int, default=64, help="latent side (64 = 512x512)")
    parser.add_argument("--fused", action="store_true", help="also the CPU-fused graph, interleaved")
    parser.add_argument(
        "--fused-onnx", type=Path, default=None, help="the fused graph (an `sdrt export --fused-attention` UNet)"
    )
    parser.add_argument("--runs", type=int, default=1, help="profiled calls per graph (interleaved)")
    parser.add_argument("--json", type=Path, default=None)
    arguments = parser.parse_args()
    plain = arguments.onnx or arguments.work / "plain" / "model.onnx"
    if not plain.exists():
        trace(plain, arguments.latent)
    graphs = {"plain": plain}
    if arguments.fused:
        from sdrt.export import onnx_graph

        fused = arguments.fused_onnx or arguments.work / "fused" / "model.onnx"
        if not fused.exists():
            fused.parent.mkdir(parents=True, exist_ok=True)
            onnx_graph.fuse_attention_for_cpu(plain, fused)
        graphs["fused"] = fused
    collected: dict[str, list] = {name: [] for name in graphs}
    outputs = {}
    load_averages: dict[str, list[float]] = {name: [] for name in graphs}  # 1-minute, after each call
    for _ in range(arguments.runs):
        for name, path in graphs.items():
            times, outputs[name], wall, peak = in_process(profile, path=path, latent=arguments.latent)
            collected[name].append((times, wall, peak))
            load_averages[name].append(round(os.getloadavg()[0], 2))
            print(name, f"{wall:.2f} s, peak {peak / 2**30:.2f} GiB, load {load_averages[name][-1]}", flush=True)
    report: dict = {
        "machine": machine_info(),
        "command": " ".join(["python", "benchmarks/ort_profile.py", *sys.argv[1:]]),
        "note": "a 2-core machine shared with other jobs while measuring: read the shares, not the seconds",
        "batch": BATCH,
        "latent": arguments.latent,
        "image": arguments.latent * 8,
        "graphs": {},
    }
    for name, runs in collected.items():
        walls = [wall for _, wall, _ in runs]
        middle = runs[walls.index(statistics.median_low(walls))][0]
        report["graphs"][name] = {
            "call_s": walls,
            "call_s_median": statistics.median(walls),
            "load_average_1min": load_averages[name],
            "peak_rss_gib": round(max(peak for _, _, peak in runs) / 2**30, 2),
            "op_type": shares(middle["op"], TOP_OPS),
            "block": shares(middle["block"]),
        }
    if "fused" in outputs:
        pairs = zip(report["graphs"]["fused"]["call_s"], report["graphs"]["plain"]["call_s"])
        report["fused_over_plain_call"] = sorted(fused / plain for fused, plain in pairs)
        reference = outputs["plain"]
        report["fused_max_rel_change"] = float(np.abs(outputs["fused"] - reference).max() / np.abs(reference).max())
    print_report(report, arguments.json)


if __name__ == "__main__":
    main()
