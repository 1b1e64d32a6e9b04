"""`sdrt bench --latency-table`: what each latency shortcut the export supports buys on this
machine, against the plain run of the same model (same prompt, seed and size): time per image
(median of the runs), the speed-up, and how far the image moves (mean absolute pixel difference
and PSNR against the plain image; with random weights these measure change, not quality; CLIP
scores need trained weights)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from sdrt.runtime.features.deepcache import DeepCache
from sdrt.runtime.features.step_caches import FirstBlockCache, TaylorSeer
from sdrt.runtime.manifest import CACHE_GRAPHS, UNET_SHALLOW
from sdrt.runtime.request import GenerationRequest
from sdrt.runtime.schedulers.spaces import FLOW

PLAIN = "plain"
FEW_STEPS = 4  # LCM / TCD: what LCM-LoRA and TCD-LoRA users run
FEW_STEP_GUIDANCE = 1.0
#: The step caches measured: FirstBlockCacheConfig's default threshold and a looser one;
#: TaylorSeerCacheConfig's defaults (a full call every 5 steps after 3) and a full call every other step.
FIRST_BLOCK_THRESHOLDS = (0.05, 0.2)
TAYLORSEER_ITEMS = {"taylorseer": TaylorSeer(), "taylorseer_2": TaylorSeer(cache_interval=2)}


@dataclass(frozen=True)
class Item:
    name: str
    settings: dict = field(default_factory=dict)


def items_for(manifest) -> list[Item]:
    """The plain run, and each shortcut this export can take."""
    features = manifest.model_family.features
    found = [Item(PLAIN)]
    if manifest.sampler_space != FLOW:  # LCM and TCD are UNet samplers
        found += [
            Item(f"lcm_{FEW_STEPS}", {"sampler": "lcm", "steps": FEW_STEPS, "guidance_scale": FEW_STEP_GUIDANCE}),
            Item(f"tcd_{FEW_STEPS}", {"sampler": "tcd", "steps": FEW_STEPS, "guidance_scale": FEW_STEP_GUIDANCE}),
        ]
    if FirstBlockCache.feature in features and all(name in manifest.components for name in CACHE_GRAPHS):
        found += [Item(f"first_block_{t:g}", {"cache": FirstBlockCache(t)}) for t in FIRST_BLOCK_THRESHOLDS]
    if TaylorSeer.feature in features:
        found += [Item(name, {"cache": cache}) for name, cache in TAYLORSEER_ITEMS.items()]
    if UNET_SHALLOW in manifest.components:
        found += [Item(f"deepcache_{interval}", {"deepcache": DeepCache(interval)}) for interval in (2, 3)]
    if manifest.tiny_vae is not None:
        found.append(Item("tiny_vae", {"vae": "tiny"}))
    return found


def compare(plain: np.ndarray, image: np.ndarray) -> dict:
    difference = np.abs(image.astype(np.float64) - plain.astype(np.float64))
    mse = float(np.mean(difference**2))
    return {
        "mean_abs_255": float(difference.mean() * 255),
        "psnr_db": None if mse == 0 else float(10 * np.log10(1.0 / mse)),
    }


def latency_table(
    pipeline, base: GenerationRequest, runs: int, warmup: int, say: Callable[[str], None] = lambda line: None
) -> dict:
    from dataclasses import replace

    rows = {}
    plain_image = plain_time = None
    for item in items_for(pipeline.manifest):
        request = replace(base, **item.settings)
        for _ in range(warmup):
            pipeline.run(replace(request, steps=1) if item.name == PLAIN else request)
        times, result = [], None
        for _ in range(runs):
            result = pipeline.run(request)
            times.append(result.timings["total"] / max(len(result.images), 1))
        median = statistics.median(times)
        if item.name == PLAIN:
            plain_image, plain_time = result.array, median
        rows[item.name] = {
            "steps": request.steps,
            "seconds_per_image": median,
            "speedup": plain_time / median,
            **compare(plain_image, result.array),
            "unet_calls": len(result.timings.get("unet_steps", ())),
            # With a step cache: the calls that ran the whole transformer (the positive branch's).
            **({} if result.full_steps is None else {"full_calls": len(result.full_steps["cond"])}),
        }
        say(f"{item.name}: {median:.3f} s per image")
    return rows


def format_table(rows: dict) -> str:
    lines = [f"{'item':<16} {'steps':>5} {'s/image':>9} {'speed-up':>9} {'MAD/255':>8} {'PSNR dB':>8} {'full':>5}"]
    for name, row in rows.items():
        psnr = "inf" if row["psnr_db"] is None else f"{row['psnr_db']:.1f}"
        lines.append(
            f"{name:<16} {row['steps']:>5} {row['seconds_per_image']:>9.3f} {row['speedup']:>8.2f}x "
            f"{row['mean_abs_255']:>8.2f} {psnr:>8} {row.get('full_calls', row['unet_calls']):>5}"
        )
    return "\n".join(lines)
