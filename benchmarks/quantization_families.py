"""Every family's tiny random model exported in fp32, int8 and int4 weights (`sdrt export
--weights`), each generating one image torch-free: what each component's quantization did (MatMuls
packed, error against PyTorch) and the image change against the fp32 export (max/mean /255, PSNR).

    python benchmarks/quantization_families.py --work /tmp/qf \\
        --json docs/benchmarks/cpu-tiny-families-quantization.json

Random weights: the figures check the path and the arithmetic, not the quality cost on trained
models (docs/quantization.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks._image_change import image_change
from benchmarks.quantization import component_mib
from sdrt.benchmark import machine_info
from sdrt.runtime.manifest import Manifest

#: `sdrt export --random` names, one per family (sdrt.export.random_sources.RANDOM_MODELS).
FAMILIES = ("tiny", "tiny-sdxl", "tiny-flux", "tiny-sd3", "tiny-chroma", "tiny-flux2-klein", "tiny-zimage")
WEIGHTS = ("fp32", "int8", "int4")
PROMPT = "an astronaut riding a horse on mars"
STEPS, SEED = 4, 0
SIDE = 128  # pixels: a few latent patches for every family, and little memory


def export(name: str, weights: str, folder: Path) -> None:
    if (folder / "manifest.json").is_file():
        return
    command = [sys.executable, "-m", "sdrt.cli", "export", "--random", name, "--out", str(folder)]
    command += [] if weights == "fp32" else ["--weights", weights]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def image(folder: Path, scratch: Path) -> np.ndarray:
    """One image, generated in its own process (each export's memory is freed with it)."""
    from PIL import Image

    out = scratch / f"{folder.name}.png"
    command = [sys.executable, "-m", "sdrt.cli", "generate", PROMPT, "--model", str(folder), "--out", str(out)]
    command += ["--steps", str(STEPS), "--seed", str(SEED), "--height", str(SIDE), "--width", str(SIDE), "--quiet"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return np.asarray(Image.open(out), dtype=np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="Folder for the exports (reused when there).")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES))
    parser.add_argument("--json", type=Path, default=None)
    arguments = parser.parse_args()
    rows = []
    for name in arguments.families:
        reference = None
        for weights in WEIGHTS:
            folder = arguments.work / f"{name}-{weights}"
            export(name, weights, folder)
            picture = image(folder, arguments.work)
            reference = picture if reference is None else reference
            quantized = {
                component: {
                    "matmuls_quantized": spec.quantization.matmuls_quantized,
                    "matmuls_kept": spec.quantization.matmuls_kept,
                    "max_rel_error": spec.quantization.max_rel_error,
                    "estimated_output_rel_error": spec.quantization.estimated_output_rel_error,
                }
                for component, spec in Manifest.load(folder).components.items()
                if spec.quantization is not None
            }
            row = {
                "model": name,
                "weights": weights,
                "mib": component_mib(folder),
                "image_change": image_change(picture, reference),
                "quantized": quantized,
            }
            rows.append(row)
            shift = row["image_change"]
            packed = ", ".join(f"{c} {q['matmuls_quantized']}" for c, q in quantized.items())
            print(
                f"{name} {weights}: max {shift['max_over_255']:.4f} mean {shift['mean_over_255']:.5f} "
                f"PSNR {shift['psnr_db']:.1f} dB; MatMuls packed: {packed or 'none'}",
                flush=True,
            )
    if arguments.json:
        report = {"machine": machine_info(), "steps": STEPS, "side": SIDE, "rows": rows}
        arguments.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
