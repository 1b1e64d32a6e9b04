"""`sdrt generate` with A1111's noise options, and `--from-png` / `--parameters`: a PNG sdrt
wrote regenerates the same pixels from its A1111 parameters text alone; fields it does not
apply are one line each."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner
from PIL import Image

from sdrt.cli import main

PROMPT = "a photo of a cat"


def generate(*arguments):
    return CliRunner().invoke(main, ["generate", *arguments, "--quiet"])


def pixels_and_text(path):
    with Image.open(path) as image:
        return np.asarray(image), image.info["parameters"]


def test_from_png_regenerates_the_same_pixels(exported_tiny, tmp_path):
    model = str(exported_tiny("standard"))
    first = tmp_path / "first.png"
    made = generate(
        PROMPT, "--model", model, "--steps", "3", "--seed", "11", "--sampler", "Euler a", "--negative-prompt",
        "blurry", "--subseed", "4", "--subseed-strength", "0.5", "--ensd", "31337", "--randn-source", "NV",
        "--num-images", "2", "--out", str(first), "--guidance", "6",
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    second_image = tmp_path / "first-2.png"
    if not second_image.exists():  # the outputs' naming: first-1.png, first-2.png
        second_image = sorted(tmp_path.glob("first*.png"))[-1]
    original, text = pixels_and_text(second_image)
    assert "Seed: 11," in text and "Variation seed: 5, Variation seed strength: 0.5" in text
    assert "ENSD: 31337" in text and "RNG: NV" in text and "Batch pos: 2" in text
    again = tmp_path / "again.png"
    result = CliRunner().invoke(
        main, ["generate", "--from-png", str(second_image), "--model", model, "--out", str(again)]
    )
    assert result.exit_code == 0, result.output
    regenerated, text_again = pixels_and_text(again)
    assert np.array_equal(regenerated, original)
    notes = [line for line in result.output.splitlines() if line.startswith("note:")]
    assert any(line.startswith("note: Model: ") for line in notes)
    assert any("Batch pos" in line for line in notes)
    assert "Variation seed: 5" in text_again


def test_parameters_text_and_unknown_fields(exported_tiny, tmp_path):
    text = (
        f"{PROMPT}\nNegative prompt: ugly\nSteps: 2, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, "
        "Seed: 3, Size: 64x64, Model: x, Face restoration: CodeFormer, RNG: CPU"
    )
    out = tmp_path / "p.png"
    arguments = ["generate", "--parameters", text, "--model", str(exported_tiny("standard")), "--out", str(out)]
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 0, result.output
    unknown = [line for line in result.output.splitlines() if "Face restoration" in line]
    assert len(unknown) == 1 and "not supported" in unknown[0]
    got, written = pixels_and_text(out)
    assert "Steps: 2, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7" in written and "Seed: 3," in written
    direct = tmp_path / "d.png"
    arguments = [PROMPT, "--negative-prompt", "ugly", "--steps", "2", "--sampler", "DPM++ 2M", "--schedule"]
    arguments += ["karras", "--guidance", "7", "--seed", "3", "--model", str(exported_tiny("standard"))]
    assert generate(*arguments, "--out", str(direct)).exit_code == 0
    assert np.array_equal(got, pixels_and_text(direct)[0])


def test_from_png_without_parameters_is_one_line(tmp_path):
    bare = tmp_path / "bare.png"
    Image.new("RGB", (8, 8)).save(bare)
    result = CliRunner().invoke(main, ["generate", "--from-png", str(bare)])
    assert result.exit_code != 0 and "has no A1111 'parameters' text" in result.output
    assert len(result.output.strip().splitlines()) <= 3  # click's usage line, hint and the error


def test_from_png_regenerates_a1111s_sampler_settings(exported_tiny, tmp_path):
    """Each A1111 sampler setting recorded in the PNG comes back through --from-png (same pixels)."""
    model = str(exported_tiny("standard"))
    first = tmp_path / "first.png"
    made = generate(
        PROMPT, "--model", model, "--steps", "3", "--seed", "5", "--sampler", "Euler", "--schedule", "karras",
        "--sgm-noise-multiplier", "--s-churn", "2", "--s-tmin", "1", "--s-tmax", "5", "--s-noise", "0.8",
        "--sigma-min", "0.1", "--sigma-max", "8", "--rho", "5", "--out", str(first),
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    original, text = pixels_and_text(first)
    recorded = "Schedule min sigma: 0.1, Schedule max sigma: 8.0, Schedule rho: 5.0, SGM noise multiplier: True, "
    recorded += "Sigma churn: 2.0, Sigma tmin: 1.0, Sigma tmax: 5.0, Sigma noise: 0.8"
    assert recorded in text
    again = tmp_path / "again.png"
    result = CliRunner().invoke(main, ["generate", "--from-png", str(first), "--model", model, "--out", str(again)])
    assert result.exit_code == 0, result.output
    regenerated, text_again = pixels_and_text(again)
    assert np.array_equal(regenerated, original) and recorded in text_again
