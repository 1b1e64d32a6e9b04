"""What each latency item buys on the CPU, sdrt beside diffusers doing the same thing in the same
run: the plain 20-step Euler run, 4-step LCM (the LCM scheduler at guidance 1 on the same UNet:
what an LCM-LoRA-merged or LCM-distilled SD 1.5 costs per step), DeepCache interval 3 (branch 0;
diffusers with the deepcache package's DeepCacheSDHelper) and the tiny VAE decoder (TAESD's
architecture; diffusers with AutoencoderTiny as its VAE). Full-size SD 1.5 architecture with
random weights, so the quality figures (mean absolute pixel difference and PSNR against the plain
run of the same side, same seed) measure how far each shortcut moves the image, not how good it
looks; CLIP scores need trained weights, which this machine lacks.

    python benchmarks/latency_items.py --size 256 --json docs/benchmarks/cpu-sd15-256-latency-items.json

Builds once (cached): the random SD 1.5 folder (as `sdrt bench --arch sd15`), a random
full-size AutoencoderTiny, and an export of both with --deepcache. Medians of --runs, interleaved.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from sdrt.benchmark import cache_dir, machine_info
from sdrt.benchmark.items import compare
from sdrt.export.exporter import ExportOptions, export_model
from sdrt.export.random_model import save_random_tiny_vae
from sdrt.export.random_sources import random_source
from sdrt.runtime.features.deepcache import DeepCache
from sdrt.runtime.pipeline import Pipeline

PROMPT = "an astronaut riding a horse on mars, highly detailed"
ITEMS = {  # name -> (sdrt settings, diffusers settings)
    "plain_euler_20": ({"steps": 20, "sampler": "euler"}, {"steps": 20, "scheduler": "euler"}),
    "lcm_4": ({"steps": 4, "sampler": "lcm", "guidance_scale": 1.0}, {"steps": 4, "scheduler": "lcm", "guidance": 1.0}),
    "deepcache_3": (
        {"steps": 20, "sampler": "euler", "deepcache": DeepCache(3)},
        {"steps": 20, "scheduler": "euler", "deepcache": 3},
    ),
    "tiny_vae": ({"steps": 20, "sampler": "euler", "vae": "tiny"}, {"steps": 20, "scheduler": "euler", "tiny": True}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    import diffusers
    from DeepCache import DeepCacheSDHelper

    root = cache_dir() / "arch"
    source = random_source("sd15", root, print)
    taesd = root / "taesd-full"
    if not (taesd / "config.json").is_file():
        save_random_tiny_vae(taesd, tiny=False)
    export = root / "sd15-onnx-fp32-deepcache-taesd"
    if not (export / "manifest.json").is_file():
        export_model(
            str(source),
            export,
            overwrite=export.exists(),
            progress=print,
            options=ExportOptions(deepcache=True, tiny_vae=str(taesd)),
        )
    ours = Pipeline.load(export)
    reference = diffusers.StableDiffusionPipeline.from_pretrained(
        source, safety_checker=None, requires_safety_checker=False
    )
    reference.set_progress_bar_config(disable=True)
    full_vae = reference.vae
    tiny_vae = diffusers.AutoencoderTiny.from_pretrained(taesd)
    schedulers = {
        "euler": diffusers.EulerDiscreteScheduler.from_config(reference.scheduler.config),
        "lcm": diffusers.LCMScheduler.from_config(reference.scheduler.config),
    }
    size = args.size

    def run_sdrt(settings: dict):
        result = ours.generate(PROMPT, seed=0, height=size, width=size, **settings)
        timings = result.timings
        return result.array[0], {
            "end_to_end": timings["total"],
            "text_encoder": timings["text_encoder"],
            "denoise": timings["denoise"],
            "vae_decoder": timings["vae_decoder"],
            "unet_calls": len(timings["unet_steps"]),
        }

    def run_diffusers(settings: dict):
        reference.scheduler = schedulers[settings["scheduler"]]
        reference.vae = tiny_vae if settings.get("tiny") else full_vae
        helper = None
        if settings.get("deepcache"):
            helper = DeepCacheSDHelper(pipe=reference)
            helper.set_params(cache_interval=settings["deepcache"], cache_branch_id=0)
            helper.enable()
        began = time.perf_counter()
        with torch.inference_mode():
            image = reference(
                PROMPT,
                num_inference_steps=settings["steps"],
                guidance_scale=settings.get("guidance", 7.5),
                height=size,
                width=size,
                output_type="np",
                generator=torch.Generator("cpu").manual_seed(0),
            ).images[0]
        elapsed = time.perf_counter() - began
        if helper is not None:
            helper.disable()
        reference.vae = full_vae
        return image, {"end_to_end": elapsed}

    run_sdrt({"steps": 1})  # warm both sides: sessions, caches, allocators
    run_diffusers({"steps": 1, "scheduler": "euler"})
    measured = {name: {"sdrt": [], "diffusers": []} for name in ITEMS}
    images = {}
    for _ in range(args.runs):
        for name, (ours_settings, theirs_settings) in ITEMS.items():
            image, timing = run_sdrt(ours_settings)
            measured[name]["sdrt"].append(timing)
            images[(name, "sdrt")] = image
            image, timing = run_diffusers(theirs_settings)
            measured[name]["diffusers"].append(timing)
            images[(name, "diffusers")] = image
            print(
                name,
                measured[name]["sdrt"][-1]["end_to_end"],
                measured[name]["diffusers"][-1]["end_to_end"],
                flush=True,
            )
    report = {"machine": machine_info(), "size": size, "runs": args.runs, "prompt": PROMPT, "items": {}}
    for name, sides in measured.items():
        entry = {}
        for side, runs in sides.items():
            stages = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
            plain = statistics.median(run["end_to_end"] for run in measured["plain_euler_20"][side])
            entry[side] = {
                "stages": stages,
                "speedup_vs_plain": plain / stages["end_to_end"],
                "quality_vs_plain": compare(images[("plain_euler_20", side)], images[(name, side)]),
            }
        entry["sdrt_vs_diffusers"] = entry["diffusers"]["stages"]["end_to_end"] / entry["sdrt"]["stages"]["end_to_end"]
        report["items"][name] = entry
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_path:
        Path(args.json_path).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
