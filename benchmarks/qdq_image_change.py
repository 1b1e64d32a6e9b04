"""The image change of Q/DQ exports (`sdrt export --qdq int8|fp8`) against the fp32 export of
the same model, on ONNX Runtime's CPU provider (sdrt's runtime as it runs any export), with the
Q/DQ record of each export's denoiser beside it.

    sdrt export --random tiny --out engines/qdq-fp32
    sdrt export --random tiny --out engines/qdq-int8 --qdq int8
    sdrt export --random tiny --out engines/qdq-fp8 --qdq fp8
    python benchmarks/qdq_image_change.py fp32=engines/qdq-fp32 int8=engines/qdq-int8 fp8=engines/qdq-fp8 \\
        --json docs/benchmarks/cpu-tiny-qdq.json

The first export is the reference. These are not TensorRT's images: ONNX Runtime fuses the Q/DQ
pairs into its own integer kernels on the CPU (sdrt.export.qdq._session says how they differ), and
it has no fp8 arithmetic (it computes the fp8-rounded values in fp32).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _image_change import PIXEL_MAX, generated, image_change  # noqa: E402

from sdrt.benchmark import machine_info  # noqa: E402
from sdrt.runtime.manifest import Manifest  # noqa: E402

PROMPTS = ("an astronaut riding a horse on mars, highly detailed", "a castle on a hill at dawn")
SEED = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exports", nargs="+", metavar="LABEL=FOLDER")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    exports = [(label, Path(folder)) for label, folder in (item.split("=", 1) for item in args.exports)]
    reference = generated(exports[0][1], PROMPTS, args.steps, SEED)
    rows = []
    for label, folder in exports[1:]:
        manifest = Manifest.load(folder)
        denoiser = manifest.model_family.denoiser.component
        record = manifest.components[denoiser].qdq
        changes = [
            image_change(got, want) for got, want in zip(generated(folder, PROMPTS, args.steps, SEED), reference)
        ]
        rows.append(
            {
                "label": label,
                "folder": str(folder),
                "denoiser": denoiser,
                "qdq": None if record is None else asdict(record),
                "image_change": changes,
            }
        )
        worst = max(changes, key=lambda c: c["max_over_255"])
        print(
            f"{label}: image change max {worst['max_over_255'] * PIXEL_MAX:.0f}/255, mean "
            f"{max(c['mean_over_255'] for c in changes) * PIXEL_MAX:.2f}/255, PSNR "
            f"{min(c['psnr_db'] for c in changes):.1f} dB (worst of {len(PROMPTS)} prompts)"
        )
    if args.json is not None:
        report = {"machine": machine_info(), "steps": args.steps, "prompts": list(PROMPTS), "seed": SEED, "rows": rows}
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
