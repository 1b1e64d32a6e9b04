"""Z-Image, FLUX.2 [klein] and Chroma through `sdrt generate` in ONE process that cannot import
torch, transformers, diffusers or scipy (tests/no_heavy_imports.py), each PNG equal to
Pipeline.generate here, which tests/runtime/test_zimage.py, test_flux2.py and test_chroma.py hold
equal to ZImagePipeline, Flux2KleinPipeline and ChromaPipeline with the same settings. One process
for the three: a fresh interpreter loading onnxruntime is most of each run's cost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from sdrt.runtime.pipeline import Pipeline

PROMPT = "a red fox in a snowy forest at dawn"
SIZE = {"height": 64, "width": 48}
STEPS, SEED = 2, 6
NO_HEAVY_IMPORTS = Path(__file__).parent.parent / "no_heavy_imports.py"
#: The families' default guidance when the CLI is given none: ZImagePipeline's 5.0,
#: Flux2KleinPipeline's 4.0, ChromaPipeline's 5.0 (each pipeline's __call__ default).
DEFAULT_GUIDANCE = {"zimage": 5.0, "klein": 4.0, "chroma": 5.0}
#: 8-bit rounding of the written PNG (half a level), and float32 noise on top.
PNG_ROUNDING = 0.5 / 255 + 1e-6


def _picture(width: int, height: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).random((height, width, 3))
    smooth = (pixels + np.roll(pixels, 1, axis=0) + np.roll(pixels, 1, axis=1)) / 3
    return Image.fromarray((smooth * 255).astype(np.uint8))


def test_zimage_klein_and_chroma_run_in_one_process_without_torch(
    exported_zimage, exported_flux2_klein, exported_chroma, tmp_path
):
    """No --guidance: each family's own default. Z-Image with a negative prompt and CFG truncated
    on the second of two steps; klein with a reference image (base model: real CFG); Chroma with a
    negative prompt. The PNG parameters record what each run used."""
    reference = tmp_path / "reference.png"
    _picture(64, 80, 2).save(reference)
    common = ["--steps", str(STEPS), "--seed", str(SEED), "--height", str(SIZE["height"])]
    common += ["--width", str(SIZE["width"]), "--quiet"]
    runs = {
        "zimage": [str(exported_zimage), "--negative-prompt", "blurry", "--cfg-truncation", "0.1"],
        "klein": [str(exported_flux2_klein), "--reference-image", str(reference)],
        "chroma": [str(exported_chroma), "--negative-prompt", "blurry"],
    }
    calls = [
        ["generate", PROMPT, "--model", *arguments, *common, "--out", str(tmp_path / f"{name}.png")]
        for name, arguments in runs.items()
    ]
    code = "from sdrt.cli import main\n" + "".join(f"main({call!r}, standalone_mode=False)\n" for call in calls)
    completed = subprocess.run([sys.executable, str(NO_HEAVY_IMPORTS), code], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    settings = {"steps": STEPS, "seed": SEED, **SIZE}
    expected = {
        "zimage": Pipeline.load(exported_zimage).generate(
            PROMPT, negative_prompt="blurry", cfg_truncation=0.1, guidance_scale=DEFAULT_GUIDANCE["zimage"], **settings
        ),
        "klein": Pipeline.load(exported_flux2_klein).generate(
            PROMPT,
            reference_images=[Image.open(reference)],
            guidance_scale=DEFAULT_GUIDANCE["klein"],
            **settings,
        ),
        "chroma": Pipeline.load(exported_chroma).generate(
            PROMPT, negative_prompt="blurry", guidance_scale=DEFAULT_GUIDANCE["chroma"], **settings
        ),
    }
    for name, result in expected.items():
        written = Image.open(tmp_path / f"{name}.png")
        pixels = np.asarray(written.convert("RGB"), dtype=np.float32) / 255
        assert result.array.std() > 0.01, name
        assert np.abs(pixels - result.array[0]).max() <= PNG_ROUNDING, name
        assert f"CFG scale: {DEFAULT_GUIDANCE[name]:g}" in written.info["parameters"], name
    assert "CFG truncation: 0.1" in Image.open(tmp_path / "zimage.png").info["parameters"]
    assert "Reference images: 1" in Image.open(tmp_path / "klein.png").info["parameters"]
    assert "Negative prompt: blurry" in Image.open(tmp_path / "chroma.png").info["parameters"]
