"""Where one SD3.5 Medium transformer call's time goes on the CPU, sdrt beside diffusers.

sdrt's side: ONNX Runtime's profiler on the exported transformer (the session sdrt opens: the
cached optimized graph when `sdrt.runtime.engines.ort_cache` holds one, else the export at the
highest optimization level), its kernel times summed per operator type and per block kind,
read from torch.onnx's node names (`/model/transformer_blocks.3/block/attn2/to_q/MatMul` ->
the dual attention). diffusers' side: torch.profiler (CPU) on SD3Transformer2DModel from the
same random weights and inputs, its self times per aten operator, and its module times per
block kind from forward hooks. Both sides' operators also summed per kind (matmul, attention,
softmax, normalization, elementwise, data movement), so the two can be set op kind against op
kind. Each side runs in a process of its own (one warm-up call, then the profiled call); run it
under `flock /work/locks/bigmem` (each side holds about 10-13 GiB).

    flock /work/locks/bigmem python benchmarks/dit_profile.py \
        --json docs/benchmarks/cpu-sd35-medium-512-dit-profile.json

On a machine shared with other jobs, read the shares, not the seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _profiling import cpu_session, in_process, kernel_times, print_report, shares  # noqa: E402

from sdrt.benchmark import machine_info  # noqa: E402
from sdrt.benchmark.worker import peak_rss_bytes  # noqa: E402

ARCH = Path.home() / ".cache" / "sdrt" / "arch"
ONNX_FOLDER, DIFFUSERS_FOLDER = ARCH / "sd35-medium-onnx-fp32", ARCH / "sd35-medium-diffusers"
#: Classifier-free guidance's batch; CLIP's 77 tokens + T5's 256 (StableDiffusion3Pipeline's
#: max_sequence_length default); SD3.5 Medium's transformer config (in_channels, pooled_projection_dim,
#: joint_attention_dim); 8x VAE.
BATCH, TEXT_TOKENS, CHANNELS, POOLED, CONTEXT, VAE_SCALE = 2, 77 + 256, 16, 2048, 4096, 8
#: A flow-matching timestep mid-schedule (sigma 0.5 * 1000, as SD3's pipeline passes it).
TIMESTEP, SEED = 500.0, 0
TOP = 15

#: Operator kinds, each side's names -> kind; anything else is "other".
ORT_KINDS = {
    "matmul": {"MatMul", "Gemm", "FusedMatMul", "FusedGemm", "MatMulNBits", "Conv", "FusedConv", "Einsum"},
    "attention": {"MultiHeadAttention", "Attention", "GroupQueryAttention"},
    "softmax": {"Softmax"},
    "normalization": {"LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization",
                      "SkipSimplifiedLayerNormalization", "RMSNormalization"},
    "elementwise": {"Add", "Mul", "Div", "Sub", "Pow", "Sqrt", "Tanh", "Sigmoid", "Where", "Cast", "Gelu",
                    "FastGelu", "BiasGelu", "QuickGelu", "ReduceMean", "Erf", "Sin", "Cos", "GreaterOrEqual"},
    "data movement": {"Transpose", "Reshape", "Concat", "Slice", "Gather", "Split", "Expand", "Unsqueeze",
                      "Squeeze", "Shape", "Identity", "Tile"},
}  # fmt: skip
TORCH_KINDS = {
    "matmul": {"aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm", "aten::mkldnn_convolution",
               "aten::_mkldnn_convolution", "aten::convolution", "aten::_convolution", "aten::einsum"},
    "attention": {"aten::_scaled_dot_product_flash_attention_for_cpu",
                  "aten::_scaled_dot_product_attention_math", "aten::scaled_dot_product_attention"},
    "softmax": {"aten::_softmax", "aten::softmax"},
    "normalization": {"aten::native_layer_norm", "aten::layer_norm", "aten::rms_norm", "aten::_fused_rms_norm"},
    "elementwise": {"aten::add", "aten::mul", "aten::div", "aten::sub", "aten::pow", "aten::rsqrt", "aten::silu",
                    "aten::gelu", "aten::tanh", "aten::mean", "aten::where", "aten::add_", "aten::mul_",
                    "aten::sigmoid", "aten::exp", "aten::sin", "aten::cos", "aten::neg", "aten::rsub"},
    "data movement": {"aten::copy_", "aten::cat", "aten::clone", "aten::contiguous", "aten::transpose",
                      "aten::permute", "aten::view", "aten::reshape", "aten::_unsafe_view", "aten::chunk",
                      "aten::split", "aten::slice", "aten::select", "aten::t", "aten::expand", "aten::to",
                      "aten::_to_copy", "aten::empty", "aten::empty_like", "aten::unsqueeze", "aten::as_strided",
                      "aten::flatten", "aten::index", "aten::fill_", "aten::zero_", "aten::zeros"},
}  # fmt: skip

#: Module names inside a transformer block -> block kind (diffusers' JointTransformerBlock).
BLOCK_PARTS = {
    "attn": "joint attention",
    "attn2": "dual attention (MMDiT-X attn2)",
    "ff": "MLP (image)",
    "ff_context": "MLP (text)",
    "norm1": "norms and modulation",
    "norm1_context": "norms and modulation",
    "norm2": "norms and modulation",
    "norm2_context": "norms and modulation",
}
#: Top-level module names outside the blocks -> kind.
OUTER_PARTS = {
    "pos_embed": "embeddings",
    "time_text_embed": "embeddings",
    "context_embedder": "embeddings",
    "norm_out": "output",
    "proj_out": "output",
}
#: Inside an attention, the sub-module paths -> what they are (else the attention's own core).
ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out", "to_add_out")
ATTENTION_NORMS = ("norm_q", "norm_k", "norm_added_q", "norm_added_k")


def kind_of(op: str, kinds: dict[str, set[str]]) -> str:
    return next((kind for kind, names in kinds.items() if op in names), "other")


def block_kind(node_name: str) -> tuple[str, str]:
    """A node's (block kind, part): `/model/transformer_blocks.3/block/attn/to_q/MatMul` ->
    ("joint attention", "projections"); the part splits an attention into its projections,
    q/k RMS norms and core (scores, softmax, weighted sum)."""
    parts = [part for part in node_name.split("/") if part and part not in ("model", "block")]
    if parts and parts[0].startswith("transformer_blocks"):
        inner = parts[1] if len(parts) > 2 else ""
        kind = BLOCK_PARTS.get(inner, "residuals and skip gates")
        if inner in ("attn", "attn2"):
            sub = parts[2] if len(parts) > 3 else ""
            part = "projections" if sub in ATTENTION_PROJECTIONS else "q/k norms" if sub in ATTENTION_NORMS else "core"
            return kind, part
        return kind, ""
    return (OUTER_PARTS.get(parts[0], "other") if parts else "other"), ""


def inputs(height: int, width: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    latent = (height // VAE_SCALE, width // VAE_SCALE)
    return {
        "hidden_states": rng.standard_normal((BATCH, CHANNELS, *latent), dtype=np.float32),
        "timestep": np.full((BATCH,), TIMESTEP, np.float32),
        "encoder_hidden_states": rng.standard_normal((BATCH, TEXT_TOKENS, CONTEXT), dtype=np.float32),
        "pooled_projections": rng.standard_normal((BATCH, POOLED), dtype=np.float32),
    }


def ort_session(folder: Path, profile_prefix: str | None, configure=None):
    """The transformer's session as sdrt opens it on the CPU, profiling into `profile_prefix`;
    `configure(options)` changes its options (an A/B setting). Returns (session, whether from cache)."""
    import onnxruntime as ort

    from sdrt.runtime.engines import ort_arena
    from sdrt.runtime.manifest import Manifest

    spec = Manifest.load(folder).components["transformer"]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    ort_arena.share(options)
    if configure:
        configure(options)
    return cpu_session(folder, spec, options)


def ort_side(folder: Path, height: int, width: int) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        began = time.perf_counter()
        session, cached = ort_session(folder, str(Path(scratch) / "ort"))
        load = time.perf_counter() - began
        feeds = {**inputs(height, width), "skip_layers": np.zeros(_skip_length(session), np.float32)}
        warm = _timed(lambda: session.run(None, feeds))
        call = _timed(lambda: session.run(None, feeds))
        events = json.loads(Path(session.end_profiling()).read_text())
    by_op: dict[str, float] = defaultdict(float)
    by_block: dict[str, float] = defaultdict(float)
    by_part: dict[str, float] = defaultdict(float)
    nodes: dict[str, float] = defaultdict(float)
    for node, op, seconds in kernel_times(events):
        kind, part = block_kind(node)
        by_op[op] += seconds
        by_block[kind] += seconds
        if part:
            by_part[f"{kind}: {part}"] += seconds
        nodes[f"{kind}: {op}"] += seconds
    return {
        "graph": "cached optimized graph (sdrt.runtime.engines.ort_cache)" if cached else "exported, ORT_ENABLE_ALL",
        "load_s": round(load, 2),
        "warmup_call_s": round(warm, 2),
        "call_s": round(call, 2),
        "peak_rss_gib": round(peak_rss_bytes() / 2**30, 2),
        **_summaries(by_op, ORT_KINDS),
        "block_kind": shares(by_block),
        "attention_parts": shares(by_part),
        "block_kind_by_op": shares(nodes, TOP),
    }


def _skip_length(session) -> int:
    (shape,) = [i.shape for i in session.get_inputs() if i.name == "skip_layers"]
    return int(shape[0])


def torch_side(folder: Path, height: int, width: int, threads: int | None) -> dict:
    import torch
    from diffusers import SD3Transformer2DModel

    if threads:
        torch.set_num_threads(threads)
    began = time.perf_counter()
    model = SD3Transformer2DModel.from_pretrained(folder / "transformer", torch_dtype=torch.float32).eval()
    load = time.perf_counter() - began
    feeds = {name: torch.from_numpy(array) for name, array in inputs(height, width).items()}
    by_block: dict[str, float] = defaultdict(float)
    _time_modules(model, by_block)

    def call():
        with torch.no_grad():
            model(**feeds, return_dict=False)

    warm = _timed(call)
    by_block.clear()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        seconds = _timed(call)
    by_op = {event.key: event.self_cpu_time_total / 1e6 for event in profiler.key_averages()}
    blocks = dict(by_block)
    blocks["residuals and skip gates"] = blocks.pop("transformer blocks", 0.0) - sum(
        value for key, value in blocks.items() if key in set(BLOCK_PARTS.values())
    )
    return {
        "threads": torch.get_num_threads(),
        "load_s": round(load, 2),
        "warmup_call_s": round(warm, 2),
        "call_s": round(seconds, 2),
        "note": "call_s is with the profiler on; warmup_call_s without it",
        "peak_rss_gib": round(peak_rss_bytes() / 2**30, 2),
        **_summaries(by_op, TORCH_KINDS),
        "block_kind": shares(blocks),
    }


def _time_modules(model, totals: dict[str, float]) -> None:
    """Forward hooks adding each block part's wall time to totals[kind] (the whole blocks too)."""
    parts = [(f"transformer_blocks.{i}.{name}", kind) for i in range(len(model.transformer_blocks))
             for name, kind in BLOCK_PARTS.items()]  # fmt: skip
    parts += list(OUTER_PARTS.items())
    parts += [(f"transformer_blocks.{i}", "transformer blocks") for i in range(len(model.transformer_blocks))]
    modules = dict(model.named_modules())
    for path, kind in parts:
        if path not in modules:
            continue
        started: list[float] = []
        modules[path].register_forward_pre_hook(lambda *_, s=started: s.append(time.perf_counter()))
        modules[path].register_forward_hook(
            lambda *_, s=started, k=kind: totals.__setitem__(k, totals[k] + time.perf_counter() - s.pop())
        )


def _summaries(by_op: dict[str, float], kinds: dict[str, set[str]]) -> dict:
    by_kind: dict[str, float] = defaultdict(float)
    for op, seconds in by_op.items():
        by_kind[kind_of(op, kinds)] += seconds
    return {"profiled_s": round(sum(by_op.values()), 2), "op_kind": shares(by_kind), "op_type": shares(by_op, TOP)}


def _timed(call) -> float:
    began = time.perf_counter()
    call()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx-folder", type=Path, default=ONNX_FOLDER, help="the sdrt export")
    parser.add_argument("--diffusers-folder", type=Path, default=DIFFUSERS_FOLDER, help="the same model for diffusers")
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None, help="torch's threads (default: torch's own)")
    parser.add_argument("--sides", default="sdrt,diffusers")
    parser.add_argument("--json", type=Path, default=None)
    arguments = parser.parse_args()
    report: dict = {
        "machine": machine_info(),
        "command": " ".join(["python", "benchmarks/dit_profile.py", *sys.argv[1:]]),
        "note": "a 2-core machine shared with other jobs: read the shares, not the seconds",
        "batch": BATCH,
        "image": [arguments.height, arguments.width],
        "text_tokens": TEXT_TOKENS,
        "load_average_before": list(os.getloadavg()),
    }
    for side in arguments.sides.split(","):
        shape = {"height": arguments.height, "width": arguments.width}
        if side == "sdrt":  # each side in a process of its own, so that its peak RSS is its own
            report[side] = in_process(ort_side, folder=arguments.onnx_folder, **shape)
        else:
            report[side] = in_process(torch_side, folder=arguments.diffusers_folder, threads=arguments.threads, **shape)
        print(side, report[side]["call_s"], "s", flush=True)
    report["load_average_after"] = list(os.getloadavg())
    print_report(report, arguments.json)


if __name__ == "__main__":
    main()
