"""stable-diffusion.cpp (its Python binding, `pip install -e '.[bench-sdcpp]'`) beside sdrt on the
same random SD 1.5 model: the diffusers folder written as an LDM single-file checkpoint
(sdrt.export.ldm_checkpoint, the layout sd.cpp reads); then, for --rounds rounds, one txt2img run of
each sd.cpp weight type and of each sdrt export (`--sdrt LABEL=FOLDER`, e.g. fp32, int8, int4
exports of that folder), every run in its own process (its peak RSS is its own), taking turns so
drift on a shared machine hits all alike. Medians, each side's ratio to the first sd.cpp type, and
the image change of each sdrt export against the first (max/mean /255, PSNR) go to --json.

    python benchmarks/sdcpp_compare.py ~/.cache/sdrt/arch/sd15-diffusers --work /tmp/sdcpp \\
        --wtype q8_0 --wtype q4_0 --sdrt fp32=engines/sd15 --sdrt int8=engines/sd15-int8 \\
        --steps 2 --size 512 --rounds 3 --json docs/benchmarks/cpu-sd15-512-sdcpp.json

Both run the same work per image: the text encoder, `--steps` steps of two UNet evaluations
(classifier-free guidance; sd.cpp runs them one after the other, sdrt as one batch of two), the VAE
decoder. Samplers: sdrt's Euler; sd.cpp its default for SD 1.x (the same model calls per step).
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

import numpy as np

from sdrt.benchmark import machine_info

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _image_change import image_change  # noqa: E402  (the other benchmarks' image change)

PROMPT = "a photo of a cat"
CFG_SCALE, SEED = 7.0, 1
SDRT_SIDE = "sdrt:"  # a child's --one for an sdrt export: "sdrt:LABEL=FOLDER"


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


def run_sdrt(folder: str, steps: int, size: int, threads: int, image_out: Path) -> dict:
    from sdrt.runtime.pipeline import Pipeline

    start = time.perf_counter()
    pipeline = Pipeline.load(folder, threads=threads)
    load = time.perf_counter() - start
    start = time.perf_counter()
    result = pipeline.generate(
        PROMPT, steps=steps, height=size, width=size, guidance_scale=CFG_SCALE, seed=SEED, sampler="euler"
    )
    generate = time.perf_counter() - start
    np.save(image_out, np.asarray(result.images[0], dtype=np.float64))  # pixels, for image_change
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"steps": steps, "size": size, "load_s": load, "generate_s": generate, "peak_rss_gib": peak / 2**30,
            "unet_calls_s": result.timings.get("unet_steps"), "load_average": os.getloadavg()}  # fmt: skip


def summarize(rows: list[dict], baseline: list[dict]) -> dict:
    generate = [row["generate_s"] for row in rows]
    pairs = [b["generate_s"] / row["generate_s"] for row, b in zip(rows, baseline)]  # speed-up, turn by turn
    return {"runs": rows, "load_s_median": float(np.median([row["load_s"] for row in rows])),
            "generate_s_median": float(np.median(generate)), "generate_s_min": min(generate),
            "generate_s_max": max(generate), "peak_rss_gib_max": max(row["peak_rss_gib"] for row in rows),
            "speedup_vs_first_sdcpp_median": float(np.median(pairs)), "speedup_pairs": pairs}  # fmt: skip


def child(args, what: str) -> dict:
    command = [sys.executable, __file__, str(args.folder), "--work", str(args.work), "--one", what]
    command += ["--steps", str(args.steps), "--size", str(args.size), "--threads", str(args.threads)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a diffusers SD 1.5 folder (sdrt's random full-size one)")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--wtype", action="append", default=None, help="sd.cpp weight type (q8_0, q4_0, f32)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--sdrt", action="append", default=[], metavar="LABEL=FOLDER", help="an sdrt export")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child process: one run of one side
    args = parser.parse_args()
    checkpoint = args.work / "sd15.safetensors"
    if args.one:
        if args.one.startswith(SDRT_SIDE):
            label, folder = args.one[len(SDRT_SIDE) :].split("=", 1)
            row = run_sdrt(folder, args.steps, args.size, args.threads, args.work / f"sdrt-{label}.npy")
        else:
            row = run_one(str(checkpoint), args.one, args.steps, args.size, args.threads)
        print(json.dumps(row))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    write_checkpoint(args.folder, checkpoint)
    sides = [*(args.wtype or ["q8_0"]), *(SDRT_SIDE + entry for entry in args.sdrt)]
    rows: dict[str, list[dict]] = {side: [] for side in sides}
    for round_index in range(args.rounds):
        for side in sides:
            rows[side].append(child(args, side))
            print(f"round {round_index + 1}: {side} {rows[side][-1]['generate_s']:.1f} s", file=sys.stderr)
    first = rows[sides[0]]
    report = {"machine": machine_info(), "steps": args.steps, "size": args.size, "threads": args.threads,
              "rounds": args.rounds, "sides": {side.removeprefix(SDRT_SIDE): summarize(rows[side], first)
                                               for side in sides}}  # fmt: skip
    labels = [entry.split("=", 1)[0] for entry in args.sdrt]
    if labels:
        images = {label: np.load(args.work / f"sdrt-{label}.npy").astype(np.float64) for label in labels}
        reference = images[labels[0]]
        report["image_change_vs_" + labels[0]] = {label: image_change(images[label], reference) for label in labels[1:]}
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
