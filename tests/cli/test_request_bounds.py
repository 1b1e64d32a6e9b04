"""What a command is asked for is checked before any of it is done (issue 38): image and step
counts refused at once, with the option and the limit named; a prompt schedule of any length
costs only its change points; out-of-range numbers end in one error line with no numpy
warning printed before it."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from sdrt.cli import main
from sdrt.runtime.request_checks import MAX_NUM_IMAGES, MAX_STEPS
from sdrt.runtime.text.prompts.schedule import prompt_schedule
from support.hostile import assert_one_line_error

HUGE = 10**9


@pytest.mark.parametrize(
    "arguments, needle",
    [
        (["--num-images", str(HUGE)], f"num_images must be at most {MAX_NUM_IMAGES}"),
        (["--num-images", "0"], "num_images must be a positive integer"),
        (["--steps", str(HUGE)], f"steps must be an integer from 1 to {MAX_STEPS}"),
    ],
)
def test_generate_refuses_counts_before_loading_anything(tmp_path, arguments, needle):
    # The model does not exist: the count is refused before it would be looked for.
    result = CliRunner().invoke(
        main, ["generate", "x", "--model", str(tmp_path / "none"), "--out", str(tmp_path / "x.png"), *arguments]
    )
    assert_one_line_error(result, needle)
    assert list(tmp_path.iterdir()) == []


def test_tokenize_refuses_a_schedule_past_the_step_limit(sd15_dir):
    result = CliRunner().invoke(main, ["tokenize", "[a|b] cat", "--model", str(sd15_dir), "--steps", str(HUGE)])
    message = assert_one_line_error(result, "--steps")
    assert str(MAX_STEPS) in message


def test_a_long_schedule_costs_only_its_change_points():
    started = time.perf_counter()
    schedule = prompt_schedule("[a:b:500000000] [c::0.25] cat", HUGE)
    assert time.perf_counter() - started < 1.0  # step by step it would be a billion renders
    assert schedule == [(HUGE // 4, "a c cat"), (HUGE // 2, "a  cat"), (HUGE, "b  cat")]


@pytest.mark.parametrize("when", ["1e999", "-1e999", "1.0e999", "9" * 400])
def test_edit_steps_past_any_number_are_capped_not_a_crash(when):
    steps = 4
    value = float(when)
    expected = "a" if value > 0 else "b"  # before every step's end, or from the first step on
    assert prompt_schedule(f"[a:b:{when}]", steps) == [(steps, expected)]


@pytest.mark.parametrize("guidance", ["1e300", "3.5e38"])
def test_a_guidance_past_float32_is_one_line_and_no_numpy_warning(exported_tiny, tmp_path, guidance):
    arguments = ["generate", "x", "--model", str(exported_tiny("standard")), "--steps", "1", "--guidance", guidance]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(main, [*arguments, "--out", str(tmp_path / "x.png")])
    assert_one_line_error(result, "guidance scale must be at most 3.4e+38")
    assert [w for w in caught if issubclass(w.category, RuntimeWarning)] == []


def test_an_overflowing_run_prints_no_numpy_warning(exported_tiny, tmp_path):
    """A scale float32 holds, but whose products overflow: the run ends in the NaN check's one
    line, with no RuntimeWarning (and its source line) before it."""
    arguments = [
        "generate",
        "x",
        "--model",
        str(exported_tiny("standard")),
        "--steps",
        "2",
        "--guidance",
        "3e38",
        "--quiet",
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(main, [*arguments, "--out", str(tmp_path / "x.png")])
    assert_one_line_error(result, "NaN")
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == []
    assert not Path(tmp_path / "x.png").exists()


def test_a_lora_weight_past_float32_prints_no_numpy_warning(exported_tiny, tiny_models, tmp_path):
    from diffusers import StableDiffusionPipeline

    from support.lora_files import kohya_lora

    lora = kohya_lora(StableDiffusionPipeline.from_pretrained(tiny_models["standard"]), tmp_path / "l.safetensors", 0)
    arguments = ["generate", "x", "--model", str(exported_tiny("standard")), "--steps", "1", "--quiet"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(main, [*arguments, "--lora", f"{lora}:1e300", "--out", str(tmp_path / "x.png")])
    assert_one_line_error(result)
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == []
