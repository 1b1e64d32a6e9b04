"""What ControlNet costs on an exported model (the full-size SD 1.5 architecture with random
weights, for instance):

1. plain generation: one UNet call of a UNet exported with ControlNet residual inputs (fed
   zeros) against the same UNet exported without them, interleaved call by call;
2. a ControlNet's cost per step beside the UNet's, in whole generations.

    python benchmarks/controlnet_cost.py --model NEW_EXPORT --old-model OLD_EXPORT \\
        --controlnet CONTROLNET_EXPORT --json docs/benchmarks/cpu-sd15-256-controlnet.json

Medians of --runs; the machine is shared, so only ratios measured side by side mean much.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from sdrt.benchmark import control_map, machine_info
from sdrt.runtime.engines.onnxruntime import OrtEngine
from sdrt.runtime.features.controlnet.residuals import ZeroResiduals
from sdrt.runtime.features.controlnet.units import ControlUnit
from sdrt.runtime.manifest import Manifest
from sdrt.runtime.pipeline import Pipeline


def unet_engine(folder: Path) -> OrtEngine:
    manifest = Manifest.load(folder)
    spec = manifest.components["unet"]
    return OrtEngine(folder / spec.file, "unet", spec, manifest.dims)


def plain_feeds(manifest: Manifest, size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    latent = size // manifest.vae_scale_factor
    return {
        "sample": rng.standard_normal((2, manifest.unet_in_channels, latent, latent), np.float32),
        "timestep": np.array([500.0], np.float32),
        "encoder_hidden_states": rng.standard_normal((2, manifest.text_length, manifest.text_hidden_size), np.float32),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="an export whose UNet takes residuals")
    parser.add_argument("--old-model", required=True, help="the same model exported without them")
    parser.add_argument("--controlnet", required=True)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    new_folder, old_folder = Path(args.model), Path(args.old_model)
    report: dict = {
        "model": str(new_folder),
        "old_model": str(old_folder),
        "controlnet": args.controlnet,
        "size": args.size,
        "runs": args.runs,
        "machine": machine_info(),
    }

    new, old = unet_engine(new_folder), unet_engine(old_folder)
    feeds = plain_feeds(Manifest.load(new_folder), args.size)
    zeros = ZeroResiduals(new.spec, {name: new.input_dtype(name) for name in new.inputs})
    with_zeros = {**feeds, **zeros.of(2, *feeds["sample"].shape[2:])}
    np.testing.assert_array_equal(new.run(with_zeros)["out_sample"], old.run(feeds)["out_sample"])
    times = {"with_residual_inputs": [], "without": []}
    for _ in range(args.runs):
        for name, engine, inputs in (("with_residual_inputs", new, with_zeros), ("without", old, feeds)):
            began = time.perf_counter()
            engine.run(inputs)
            times[name].append(time.perf_counter() - began)
    report["plain_unet_call_s"] = {name: round(statistics.median(values), 4) for name, values in times.items()}
    report["plain_unet_call_ratio"] = round(
        statistics.median([a / b for a, b in zip(times["with_residual_inputs"], times["without"])]), 4
    )
    report["plain_outputs_bit_equal"] = True
    del new, old

    pipeline = Pipeline.load(new_folder)
    settings = dict(steps=args.steps, seed=1, height=args.size, width=args.size, sampler="euler")
    unit = ControlUnit(args.controlnet, control_map(args.size, args.size))
    pipeline.generate("a house", controlnets=[unit], **settings)  # warm-up: loads the ControlNet
    unet, control, totals, plain = [], [], [], []
    for _ in range(args.runs):
        result = pipeline.generate("a house", controlnets=[unit], **settings)
        unet += result.timings["unet_steps"]
        control += result.timings["controlnet_steps"]
        totals.append(result.timings["total"])
        plain.append(pipeline.generate("a house", **settings).timings["total"])
    report["controlled"] = {
        "unet_step_s": round(statistics.median(unet), 4),
        "controlnet_step_s": round(statistics.median(control), 4),
        "controlnet_over_unet": round(statistics.median(control) / statistics.median(unet), 3),
        "image_s": round(statistics.median(totals), 3),
        "plain_image_s": round(statistics.median(plain), 3),
    }
    print(json.dumps(report, indent=2))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
