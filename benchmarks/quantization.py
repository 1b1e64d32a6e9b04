"""fp32 against int8 and int4 weights (`sdrt export --weights`) of the same model, side by side:
file sizes, load time, UNet step time, end to end, peak memory (one `sdrt bench` process per
export, so each peak is its own) and the image change against the first export.

    sdrt export --random tiny --out engines/q-fp32
    sdrt export --random tiny --out engines/q-int8 --weights int8
    sdrt export --random tiny --out engines/q-int4 --weights int4
    python benchmarks/quantization.py fp32=engines/q-fp32 int8=engines/q-int8 int4=engines/q-int4 \\
        --steps 10 --json docs/benchmarks/cpu-tiny-quantization.json

Medians of --runs (after one warm-up). The first export is the reference of the image change.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _image_change import generated, image_change  # noqa: E402

from sdrt.benchmark import machine_info  # noqa: E402
from sdrt.runtime.manifest import Manifest  # noqa: E402

MIB = 2**20
PROMPT = "an astronaut riding a horse on mars, highly detailed"
SEED = 0


def component_mib(folder: Path) -> dict[str, float]:
    manifest = Manifest.load(folder)
    sizes = {}
    for name, spec in manifest.components.items():
        files = [folder / spec.file, *(folder / Path(spec.file).parent / extra for extra in spec.data_files)]
        sizes[name] = round(sum(path.stat().st_size for path in files if path.is_file()) / MIB, 2)
    return sizes


def bench(folder: Path, steps: int, runs: int, size: int | None) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "bench.json"
        command = [sys.executable, "-m", "sdrt.cli", "bench", "--model", str(folder), "--steps", str(steps)]
        command += ["--runs", str(runs), "--json", str(report)]
        command += [] if size is None else ["--height", str(size), "--width", str(size)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        data = json.loads(report.read_text())["sdrt"]
    return {
        "load_seconds": data["load_seconds"],
        "unet_step_p50_ms": data["unet_step"]["p50"] * 1e3,
        "end_to_end_s": data["stages"]["end_to_end"]["median"],
        "peak_rss_gib": data["peak_rss_bytes"] / 2**30,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exports", nargs="+", metavar="LABEL=FOLDER")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=None, help="Image side (default: native).")
    parser.add_argument("--json", type=Path, default=None)
    arguments = parser.parse_args()
    labelled = [entry.split("=", 1) for entry in arguments.exports]
    rows, reference = [], None
    for label, folder in labelled:
        folder = Path(folder)
        (picture,) = generated(folder, [PROMPT], arguments.steps, SEED, arguments.size)
        reference = picture if reference is None else reference
        quantization = {
            name: spec.quantization.__dict__
            for name, spec in Manifest.load(folder).components.items()
            if spec.quantization is not None
        }
        rows.append(
            {
                "label": label,
                "folder": str(folder),
                "mib": component_mib(folder),
                **bench(folder, arguments.steps, arguments.runs, arguments.size),
                "image_change": image_change(picture, reference),
                "quantization": quantization,
            }
        )
        row = rows[-1]
        print(
            f"{label}: unet {row['mib'].get('unet')} MiB, text_encoder {row['mib'].get('text_encoder')} MiB, "
            f"load {row['load_seconds']:.2f} s, UNet step {row['unet_step_p50_ms']:.1f} ms, "
            f"end to end {row['end_to_end_s']:.2f} s, peak {row['peak_rss_gib']:.2f} GiB, image change "
            f"max {row['image_change']['max_over_255']:.3f} mean {row['image_change']['mean_over_255']:.4f} "
            f"PSNR {row['image_change']['psnr_db']:.1f} dB"
        )
    if arguments.json:
        report = {"machine": machine_info(), "steps": arguments.steps, "runs": arguments.runs, "rows": rows}
        arguments.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
