"""stable-diffusion.cpp (its Python binding, `pip install -e '.[bench-sdcpp]'`) on the same random
SD 1.5 model sdrt benchmarks: the diffusers folder written as an LDM single-file checkpoint
(sdrt.export.ldm_checkpoint, the layout sd.cpp reads), then one sd.cpp txt2img run per weight type
in its own process (peak RSS is the process's), printed as JSON lines.

    python benchmarks/sdcpp_compare.py ~/.cache/sdrt/arch/sd15-diffusers --work /tmp/sdcpp \\
        --wtype q8_0 --wtype q4_0 --steps 2 --size 512

Run each under `/usr/bin/time -v` or compare the printed peak RSS; quote the load average beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

PROMPT = "a photo of a cat"
CFG_SCALE, SEED = 7.0, 1


def write_checkpoint(folder: Path, out: Path) -> Path:
    from diffusers import StableDiffusionPipeline

    from sdrt.export.ldm_checkpoint import save_ldm_checkpoint

    if not out.exists():
        save_ldm_checkpoint(StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None), out)
    return out


def run_one(checkpoint: str, wtype: str, steps: int, size: int, threads: int) -> dict:
    from stable_diffusion_cpp import StableDiffusion

    start = time.perf_counter()
    sd = StableDiffusion(model_path=checkpoint, wtype=wtype, n_threads=threads, verbose=False)
    load = time.perf_counter() - start
    start = time.perf_counter()
    sd.generate_image(prompt=PROMPT, width=size, height=size, sample_steps=steps, cfg_scale=CFG_SCALE, seed=SEED)
    generate = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {"wtype": wtype, "steps": steps, "size": size, "load_s": load, "generate_s": generate,
            "peak_rss_gib": peak / 2**30, "load_average": os.getloadavg()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a diffusers SD 1.5 folder (sdrt's random full-size one)")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--wtype", action="append", default=None, help="sd.cpp weight type (q8_0, q4_0, f32)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child process: the run of one weight type
    args = parser.parse_args()
    checkpoint = args.work / "sd15.safetensors"
    if args.one:
        print(json.dumps(run_one(str(checkpoint), args.one, args.steps, args.size, args.threads)))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    write_checkpoint(args.folder, checkpoint)
    for wtype in args.wtype or ["q8_0"]:
        command = [sys.executable, __file__, str(args.folder), "--work", str(args.work), "--one", wtype]
        command += ["--steps", str(args.steps), "--size", str(args.size), "--threads", str(args.threads)]
        subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
