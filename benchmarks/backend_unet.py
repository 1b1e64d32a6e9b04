"""The full-size SD 1.5 UNet (random weights, fp32, batch 2) on each CPU engine, side by side:
ONNX Runtime on the plain graph, ONNX Runtime on the CPU-fused graph (--fused-attention's
MultiHeadAttention), and OpenVINO's CPU plugin (f32) on the plain graph.

Each engine lives in its own worker process, so that its peak memory is its own; the parent
calls them in turn (A B C A B C ...) with the same feeds, and reports per engine the median call
time, GFLOP/s (FLOPs of one call counted by torch's FlopCounterMode on the same UNet), peak RSS
and the output's change against ONNX Runtime's plain graph.

    python benchmarks/backend_unet.py --work /tmp/sd15-unet --latent 64 --runs 3 \
        --onnx ~/.cache/sdrt/arch/sd15-onnx-fp32/unet/model.onnx \
        --json docs/benchmarks/cpu-sd15-512-backends.json

(the export comes from `sdrt bench --arch sd15`, or python -c "from sdrt.benchmark import arch_model;
arch_model('sd15')"; tracing here needs the graph under 2 GiB, so only small latents)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ort_profile import BATCH, CONTEXT_WIDTH, IN_CHANNELS, SEED, TEXT_LENGTH, TIMESTEP, trace  # noqa: E402

from sdrt.benchmark import machine_info  # noqa: E402

ENGINES = ("ort", "ort-fused", "openvino")
KIB = 1024


def feeds(latent: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    return {
        "sample": rng.standard_normal((BATCH, IN_CHANNELS, latent, latent), dtype=np.float32),
        "timestep": np.full((BATCH,), TIMESTEP, np.float32),
        "encoder_hidden_states": rng.standard_normal((BATCH, TEXT_LENGTH, CONTEXT_WIDTH), dtype=np.float32),
    }


def open_engine(kind: str, graph: Path, threads: int | None):
    """A callable feeds -> output for one engine kind. A graph inside an sdrt export runs as
    sdrt's own engine for that backend (inputs checked, ControlNet residuals fed as zeros, OpenVINO's
    inputs with defaults kept as inputs); a bare graph runs in a plain session."""
    folder = graph.parent.parent
    if (folder / "manifest.json").is_file() and kind != "ort-fused":
        from sdrt.runtime.engines import LoadOptions, backend_named
        from sdrt.runtime.manifest import Manifest

        manifest = Manifest.load(folder)
        backend = backend_named("cpu" if kind == "ort" else kind)
        engine = backend.load(folder, manifest, LoadOptions(threads=threads), {})[1](graph.parent.name)
        return lambda values: engine.run(values)[engine.output_names[0]]
    if kind.startswith("ort"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        names = {tensor.name for tensor in session.get_inputs()}
        return lambda values: session.run(None, {k: v for k, v in values.items() if k in names})[0]
    import openvino

    from sdrt.runtime.engines.openvino import COMPILE_CONFIG, DEVICE, read_model

    config = dict(COMPILE_CONFIG, **({"INFERENCE_NUM_THREADS": threads} if threads else {}))
    compiled = openvino.Core().compile_model(read_model(graph), DEVICE, config)
    request = compiled.create_infer_request()
    return lambda values: np.array(request.infer(values)[compiled.outputs[0]])


def worker(kind: str, graph: Path, latent: int, threads: int | None, pipe) -> None:
    began = time.perf_counter()
    run = open_engine(kind, graph, threads)
    values = feeds(latent)
    run(values)  # warm-up (OpenVINO and ORT both prepare kernels on the first call)
    pipe.send(("ready", time.perf_counter() - began))
    while pipe.recv() == "run":
        began = time.perf_counter()
        output = run(values)
        pipe.send((time.perf_counter() - began, output))
    pipe.send(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB)


def unet_flops(latent: int) -> float:
    """FLOPs of one UNet call at batch BATCH, counted by torch (multiply-add = 2)."""
    import torch
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    from sdrt.export.random_model import SD15_PRESET

    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD15_PRESET / "unet")).eval()
    values = {name: torch.from_numpy(value) for name, value in feeds(latent).items()}
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(values["sample"], values["timestep"], values["encoder_hidden_states"])
    return float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="folder for the traced graphs")
    parser.add_argument(
        "--onnx",
        type=Path,
        default=None,
        help="a UNet ONNX (e.g. `sdrt bench --arch sd15`'s export) instead of tracing",
    )
    parser.add_argument("--latent", type=int, default=64, help="latent side (64 = 512x512)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"a comma list of {', '.join(ENGINES)}")
    parser.add_argument("--json", type=Path, default=None)
    arguments = parser.parse_args()
    kinds = [kind for kind in arguments.engines.split(",") if kind]
    plain = arguments.onnx or arguments.work / "plain" / "model.onnx"
    if not plain.exists():
        trace(plain, arguments.latent)
    graphs = {kind: plain for kind in kinds}
    if "ort-fused" in kinds:
        from sdrt.export import onnx_graph

        fused = arguments.work / "fused" / "model.onnx"
        if not fused.exists():
            fused.parent.mkdir(parents=True, exist_ok=True)
            onnx_graph.fuse_attention_for_cpu(plain, fused)
        graphs["ort-fused"] = fused
    flops = unet_flops(arguments.latent)
    context = multiprocessing.get_context("spawn")
    pipes, processes, load_s = {}, {}, {}
    for kind in kinds:  # one at a time: their loading would otherwise overlap in memory and time
        parent, child = context.Pipe()
        processes[kind] = context.Process(
            target=worker, args=(kind, graphs[kind], arguments.latent, arguments.threads, child)
        )
        processes[kind].start()
        pipes[kind] = parent
        load_s[kind] = parent.recv()[1]
        print(kind, f"loaded and warmed up in {load_s[kind]:.1f} s", flush=True)
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    outputs = {}
    for _ in range(arguments.runs):
        for kind in kinds:
            pipes[kind].send("run")
            seconds, outputs[kind] = pipes[kind].recv()
            times[kind].append(seconds)
            print(kind, f"{seconds:.2f} s", flush=True)
    peaks = {}
    for kind in kinds:
        pipes[kind].send("stop")
        peaks[kind] = pipes[kind].recv()
        processes[kind].join()
    reference = outputs[kinds[0]]
    report = {
        "machine": machine_info(),
        "command": " ".join(["python", "benchmarks/backend_unet.py", *sys.argv[1:]]),
        "note": "interleaved A B C calls, medians; a shared 2-core machine: compare the ratios",
        "batch": BATCH,
        "image": arguments.latent * 8,
        "gflop_per_call": round(flops / 1e9, 1),
        "engines": {
            kind: {
                "call_s": [round(value, 3) for value in times[kind]],
                "call_s_median": round(statistics.median(times[kind]), 3),
                "gflop_per_s": round(flops / 1e9 / statistics.median(times[kind]), 1),
                "load_and_warmup_s": round(load_s[kind], 1),
                "peak_rss_gib": round(peaks[kind] / 2**30, 2),
                f"max_rel_change_vs_{kinds[0]}": float(
                    np.abs(outputs[kind] - reference).max() / np.abs(reference).max()
                ),
            }
            for kind in kinds
        },
    }
    base = statistics.median(times[kinds[0]])
    report["speed_vs_" + kinds[0]] = {kind: round(base / statistics.median(times[kind]), 3) for kind in kinds}
    text = json.dumps(report, indent=2)
    print(text)
    if arguments.json:
        arguments.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
