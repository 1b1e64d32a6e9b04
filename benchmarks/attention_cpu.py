"""One joint attention of the SD3.5 Medium transformer on the CPU: the exported pattern
(MatMul, scale, Softmax, MatMul on heads-first tensors) against ONNX Runtime's com.microsoft
MultiHeadAttention (query as batch x tokens x hidden, key and value heads-first), on the same inputs.

    python benchmarks/attention_cpu.py [--height 512 --width 512] [--json OUT]

Reports each graph's median time of `--runs` calls, its peak memory growth (VmHWM, each in its own
process) and the largest difference of their outputs. Shapes: SD3.5 Medium's 24 heads of 64
(transformer config num_attention_heads, attention_head_dim), batch 2 (classifier-free guidance),
the image's tokens (latent side / patch 2, squared) joined with the 333 text tokens (77 CLIP + 256 T5).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HEADS, HEAD_DIM, BATCH = 24, 64, 2
TEXT_TOKENS = 77 + 256
LATENT_SCALE, PATCH = 8, 2
OPSET = 17


def tokens(height: int, width: int) -> int:
    return (height // LATENT_SCALE // PATCH) * (width // LATENT_SCALE // PATCH) + TEXT_TOKENS


def graph(kind: str, sequence: int) -> bytes:
    from onnx import TensorProto, helper

    scale = 1 / np.sqrt(HEAD_DIM)
    if kind == "exported":
        nodes = [
            helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
            helper.make_node("MatMul", ["q", "kt"], ["scores"]),
            helper.make_node("Mul", ["scores", "scale"], ["scaled"]),
            helper.make_node("Softmax", ["scaled"], ["probs"], axis=-1),
            helper.make_node("MatMul", ["probs", "v"], ["o"]),
        ]
        constants = [helper.make_tensor("scale", TensorProto.FLOAT, [], [scale])]
    else:
        nodes = [
            helper.make_node("Transpose", ["q"], ["q_bsnh"], perm=[0, 2, 1, 3]),
            helper.make_node("Reshape", ["q_bsnh", "hidden"], ["q_bsd"]),
            helper.make_node(
                "MultiHeadAttention",
                ["q_bsd", "k", "v"],
                ["o_bsd"],
                domain="com.microsoft",
                num_heads=HEADS,
                scale=scale,
            ),
            helper.make_node("Reshape", ["o_bsd", "heads"], ["o_bsnh"]),
            helper.make_node("Transpose", ["o_bsnh"], ["o"], perm=[0, 2, 1, 3]),
        ]
        constants = [
            helper.make_tensor("hidden", TensorProto.INT64, [3], [0, 0, HEADS * HEAD_DIM]),
            helper.make_tensor("heads", TensorProto.INT64, [4], [0, 0, HEADS, HEAD_DIM]),
        ]
    shape = [BATCH, HEADS, sequence, HEAD_DIM]
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name in "qkv"]
    output = helper.make_tensor_value_info("o", TensorProto.FLOAT, shape)
    model = helper.make_model(
        helper.make_graph(nodes, kind, inputs, [output], constants),
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)],
    )
    return model.SerializeToString()


def peak_kib() -> int:
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))


def child(kind: str, sequence: int, runs: int, out: str) -> None:
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    feeds = {name: rng.standard_normal((BATCH, HEADS, sequence, HEAD_DIM), dtype=np.float32) for name in "qkv"}
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(graph(kind, sequence), options, providers=["CPUExecutionProvider"])
    before = peak_kib()
    result = session.run(None, feeds)[0]
    growth = peak_kib() - before
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, feeds)
        seconds.append(time.perf_counter() - started)
    np.save(out, result)
    print(json.dumps({"median_s": float(np.median(seconds)), "peak_growth_mib": growth / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sequence = tokens(args.height, args.width)
    if args.child:
        child(args.child[0], sequence, args.runs, args.child[1])
        return
    report: dict = {"batch": BATCH, "heads": HEADS, "head_dim": HEAD_DIM, "tokens": sequence}
    outputs = {}
    for kind in ("exported", "multi_head_attention"):
        out = Path(f"/tmp/attention_cpu_{kind}.npy")
        command = [sys.executable, __file__, *sys.argv[1:], "--child", kind, str(out)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        report[kind] = json.loads(done.stdout.strip().splitlines()[-1])
        outputs[kind] = np.load(out)
        out.unlink()
        row = report[kind]
        print(f"{kind:22s} {row['median_s']:.3f} s, peak +{row['peak_growth_mib']:.0f} MiB", flush=True)
    report["max_abs_difference"] = float(np.abs(outputs["exported"] - outputs["multi_head_attention"]).max())
    print(f"largest difference {report['max_abs_difference']:.3g}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
