"""Fingerprints of a fixed set of generations, to show a refactor changes no image.

    python benchmarks/image_fingerprints.py --json before.json          # on the old code
    python benchmarks/image_fingerprints.py --compare before.json       # on the new code

Builds the tiny random-weight models (standard, inpainting, v-prediction) with diffusers,
exports them, and generates: every sampler, guidance on and off, a negative prompt, two
prompts with one seed each, several images per prompt, a non-square size, image-to-image and
inpainting with both UNet kinds. Each case's fingerprint is the sha256 of the float32 image
array and of the 8-bit pixels. `--compare` exits 1 naming every case whose bytes differ.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

PROMPT = "a photo of a cat"
SEED = 21


def cases(samplers: list[str]) -> list[tuple[str, str, dict]]:
    """(name, model kind, generate() keyword arguments)."""
    listed = [(f"txt2img-{name}", "standard", dict(prompt=PROMPT, steps=6, seed=SEED, sampler=name,
                                                   negative_prompt="blurry")) for name in samplers]
    listed += [
        ("no-guidance", "standard", dict(prompt=PROMPT, steps=3, seed=SEED, guidance_scale=1.0)),
        ("two-prompts-two-seeds", "standard", dict(prompt=[PROMPT, "a red fox"], steps=3, seed=[5, 9],
                                                   sampler="euler_a", num_images=2)),
        ("non-square", "standard", dict(prompt=PROMPT, steps=3, seed=SEED, height=64, width=96)),
        ("v-prediction", "v_prediction", dict(prompt=PROMPT, steps=4, seed=SEED, sampler="dpmpp_2m")),
        ("v-prediction-euler", "v_prediction", dict(prompt=PROMPT, steps=4, seed=SEED, sampler="euler")),
        ("v-prediction-heun", "v_prediction", dict(prompt=PROMPT, steps=3, seed=SEED, sampler="heun")),
        ("v-prediction-ddim", "v_prediction", dict(prompt=PROMPT, steps=4, seed=SEED, sampler="ddim")),
        ("v-prediction-pndm", "v_prediction", dict(prompt=PROMPT, steps=4, seed=SEED, sampler="pndm")),
        ("img2img", "standard", dict(prompt=PROMPT, steps=5, seed=SEED, init_image="photo", strength=0.6,
                                     sampler="euler")),
        ("inpaint-ordinary-unet", "standard", dict(prompt=PROMPT, steps=5, seed=SEED, init_image="photo",
                                                   mask_image="mask", strength=0.7)),
        ("inpaint-9-channel-unet", "inpaint", dict(prompt=PROMPT, steps=5, seed=SEED, init_image="photo",
                                                   mask_image="mask", sampler="ddim")),
    ]
    return listed


def fingerprints(work: Path) -> dict[str, dict[str, str]]:
    from sdrt.export.exporter import export_model
    from sdrt.export.random_model import save_random_pipeline
    from sdrt.runtime.pipeline import Pipeline

    try:
        from sdrt.runtime.schedulers import SAMPLER_NAMES as registry
    except ImportError:  # before the schedulers package
        from sdrt.runtime.scheduler_np import SCHEDULERS as registry
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    inputs = {"photo": photo, "mask": mask}
    pipelines: dict[str, Pipeline] = {}
    result = {}
    for name, kind, settings in cases(sorted(registry)):
        if kind not in pipelines:
            model = save_random_pipeline(work / "diffusers" / kind, size="tiny", kind=kind, seed=0)
            export_model(str(model), work / "onnx" / kind, progress=lambda line: None)
            pipelines[kind] = Pipeline.load(work / "onnx" / kind)
        settings = {key: inputs.get(value, value) if isinstance(value, str) and key.endswith("image") else value
                    for key, value in settings.items()}
        try:
            generated = pipelines[kind].generate(**settings)
        except TypeError:  # before the typed request: the sampler was called `scheduler`
            settings["scheduler"] = settings.pop("sampler", "lms")
            generated = pipelines[kind].generate(**settings)
        pixels = np.stack([np.asarray(image) for image in generated.images])
        result[name] = {"array_sha256": hashlib.sha256(np.ascontiguousarray(generated.array).tobytes()).hexdigest(),
                        "pixels_sha256": hashlib.sha256(pixels.tobytes()).hexdigest()}
        print(f"{name}: {result[name]['array_sha256'][:16]}", file=sys.stderr)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the fingerprints here")
    parser.add_argument("--compare", help="compare with fingerprints written earlier")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        found = fingerprints(Path(work))
    if args.json:
        Path(args.json).write_text(json.dumps(found, indent=2) + "\n", encoding="utf-8")
    if args.compare:
        expected = json.loads(Path(args.compare).read_text(encoding="utf-8"))
        differing = sorted(name for name in expected if found.get(name) != expected[name])
        missing = sorted(set(expected) - set(found))
        print(f"{len(expected) - len(differing)} of {len(expected)} cases byte-identical"
              + (f"; differ: {', '.join(differing)}" if differing else "")
              + (f"; missing: {', '.join(missing)}" if missing else ""))
        return 1 if differing else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
