"""What the tiny VAE decoder saves on the CPU: SD 1.5's VAE decoder against TAESD's architecture
(both random weights), in sdrt (ONNX Runtime) and in diffusers (torch), interleaved run by run.

    python benchmarks/tiny_vae_cost.py --model MODEL_EXPORT --diffusers-model SD15_DIFFUSERS_FOLDER \\
        --json docs/benchmarks/cpu-sd15-tiny-vae.json

MODEL_EXPORT's vae_decoder is the full decoder; the tiny one is exported here from a random
full-size AutoencoderTiny. Medians of --runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from sdrt.benchmark import machine_info
from sdrt.export.component_build import _build_component
from sdrt.export.components import ModelGeometry
from sdrt.export.options import ExportOptions
from sdrt.export.random_model import save_random_tiny_vae
from sdrt.export.tiny_vae import load_tiny_vae, tiny_vae_exports
from sdrt.runtime.engines.onnxruntime import OrtEngine
from sdrt.runtime.files.integrity import hash_file
from sdrt.runtime.manifest import Manifest
from sdrt.runtime.vae import decode


def timed(run) -> float:
    began = time.perf_counter()
    run()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--diffusers-model", required=True)
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    from diffusers import AutoencoderKL

    folder = Path(args.model)
    manifest = Manifest.load(folder)
    work = Path(tempfile.mkdtemp(prefix="sdrt-taesd-"))
    tiny_source = save_random_tiny_vae(work / "taesd", tiny=False)
    tiny_torch = load_tiny_vae(str(tiny_source)).eval()
    geometry = ModelGeometry(
        latent_channels=manifest.latent_channels,
        unet_in_channels=manifest.latent_channels,
        text_length=manifest.text_length,
        text_hidden_size=manifest.text_hidden_size,
        vae_scale_factor=manifest.vae_scale_factor,
        unet_size_multiple=manifest.vae_scale_factor,
        native_latent_size=manifest.native_height // manifest.vae_scale_factor,
    )
    components, tiny_spec = tiny_vae_exports(tiny_torch, geometry)
    (work / "export").mkdir()
    tiny_file, _, validation = _build_component(components[0], work / "export", geometry, ExportOptions())
    full_spec = manifest.components["vae_decoder"]
    # Its own sha256: the optimized-graph cache is keyed by it.
    tiny_component = replace(full_spec, file=tiny_file.name, sha256=hash_file(tiny_file), data_files={})
    engines = {
        "full": OrtEngine(folder / full_spec.file, "vae_decoder", full_spec, manifest.dims),
        "tiny": OrtEngine(tiny_file, "vae_decoder_tiny", tiny_component, manifest.dims),
    }
    tiny_manifest = replace(manifest, tiny_vae=tiny_spec)
    full_torch = AutoencoderKL.from_pretrained(Path(args.diffusers_model) / "vae").eval()
    report = {
        "model": str(folder),
        "runs": args.runs,
        "machine": machine_info(),
        "tiny_export_max_rel_error": validation["max_rel_error"],
        "sizes": {},
    }
    for size in (int(s) for s in args.sizes.split(",")):
        latents = np.random.default_rng(size).standard_normal((1, 4, size // 8, size // 8)).astype(np.float32)
        tensor = torch.from_numpy(latents)
        # Each lambda runs within this iteration (the warm-up and the timed runs below).
        runs = {
            "sdrt_full": lambda: decode(engines["full"], manifest, latents),  # noqa: B023
            "sdrt_tiny": lambda: decode(engines["tiny"], tiny_manifest, latents, "tiny"),  # noqa: B023
            "diffusers_full": lambda: full_torch.decode(tensor / full_torch.config.scaling_factor),  # noqa: B023
            "diffusers_tiny": lambda: tiny_torch.decode(tensor / tiny_torch.config.scaling_factor),  # noqa: B023
        }
        times = {name: [] for name in runs}
        with torch.no_grad():
            for run in runs.values():  # warm-up
                run()
            for _ in range(args.runs):
                for name, run in runs.items():
                    times[name].append(timed(run))
        medians = {name: round(statistics.median(values), 4) for name, values in times.items()}
        medians["sdrt_tiny_speedup_over_full"] = round(medians["sdrt_full"] / medians["sdrt_tiny"], 1)
        medians["sdrt_tiny_vs_diffusers_tiny"] = round(medians["diffusers_tiny"] / medians["sdrt_tiny"], 2)
        report["sizes"][str(size)] = medians
        print(size, medians, flush=True)
    print(json.dumps(report, indent=2))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
