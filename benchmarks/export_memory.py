"""Peak memory of a diffusion-transformer export at mid size: a tiny SD3 pipeline whose transformer
is widened to 8 layers of width 768 (169 M parameters, 646 MB in fp32), exported fp32 with its
weights released as `sdrt export` does. Run it under `/usr/bin/time -v` and read "Maximum resident
set size"; run it on an older checkout for the before figure:

    /usr/bin/time -v python benchmarks/export_memory.py OUT_DIR [LAYERS]
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

from sdrt.export import random_sd3
from sdrt.export.exporter import export_pipeline
from sdrt.export.options import ExportOptions

#: Width 12 heads x 64 = 768 (the caption projection matches it): a transformer of a few hundred MB.
MID_SIZE = {"attention_head_dim": 64, "num_attention_heads": 12, "caption_projection_dim": 768}
DEFAULT_LAYERS = 8


def main() -> None:
    out_dir = Path(sys.argv[1])
    layers = int(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_LAYERS
    random_sd3.TINY_TRANSFORMER = {**random_sd3.TINY_TRANSFORMER, **MID_SIZE, "num_layers": layers}
    pipeline = random_sd3.build_random_sd3(t5=False, seed=0, work=out_dir.with_name(out_dir.name + ".t5"))
    values = sum(p.numel() for p in pipeline.transformer.parameters())
    print(f"transformer: {values / 1e6:.0f} M parameters, {values * 4 / 2**20:.0f} MiB in fp32")
    print(f"peak RSS with everything built: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    export_pipeline(
        pipeline,
        out_dir,
        source={"model": "mid-size sd3"},
        options=ExportOptions(),
        overwrite=True,
        release_weights=True,
    )


if __name__ == "__main__":
    main()
