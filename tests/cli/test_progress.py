"""`sdrt generate`'s progress: a bar with an ETA on a terminal, plain lines into a pipe, none
with --quiet."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from sdrt.cli import main
from sdrt.cli.progress import StepProgress, format_duration


@pytest.mark.parametrize(
    "seconds, shown",
    [(0, "0:00"), (4.4, "0:04"), (59.6, "1:00"), (65, "1:05"), (3599, "59:59"), (3723, "1:02:03"), (90061, "25:01:01")],
)
def test_format_duration(seconds, shown):
    assert format_duration(seconds) == shown


@pytest.mark.parametrize("seconds", [float("inf"), float("nan"), -1])
def test_an_unknown_duration_is_a_question_mark(seconds):
    assert format_duration(seconds) == "?"


def _run(terminal: bool, total: int, seconds_per_step: float = 0.5) -> list[tuple[str, bool]]:
    """What StepProgress writes for `total` steps of `seconds_per_step` each, on a fake clock."""
    written: list[tuple[str, bool]] = []
    times = iter(range(total + 1))
    bar = StepProgress(
        True,
        terminal=terminal,
        write=lambda text, nl: written.append((text, nl)),
        clock=lambda: next(times) * seconds_per_step,
    )
    for step in range(1, total + 1):
        bar(step, total)
    return written


def test_on_a_terminal_a_bar_with_the_rate_and_eta():
    written = _run(terminal=True, total=100)
    assert len(written) == 100 and all(text.startswith("\r[") for text, _ in written)
    assert [nl for _, nl in written] == [False] * 99 + [True]  # one line in the end
    assert written[0][0].endswith("] 1/100 steps")  # no rate yet: timed from the first step's end
    assert written[10][0].endswith(" 11/100 steps, 2.00 it/s, ETA 0:44")


def test_into_a_pipe_a_plain_line_every_tenth():
    written = _run(terminal=False, total=50)
    texts = [text for text, _ in written]
    assert not any("\r" in text for text in texts) and all(nl for _, nl in written)
    assert texts[0] == "step 1/50"
    assert texts[1:] == [f"step {n}/50, 2.00 it/s, ETA {format_duration((50 - n) / 2)}" for n in range(5, 51, 5)]


def test_generate_into_a_pipe_and_quiet(exported_tiny, tmp_path):
    """Captured (not a terminal): plain step lines, no carriage return; --quiet: none."""
    arguments = ["generate", "a cat", "--model", str(exported_tiny("standard")), "--steps", "20", "--seed", "1"]
    shown = CliRunner().invoke(main, [*arguments, "--out", str(tmp_path / "a.png")])
    assert shown.exit_code == 0, shown.output
    assert "\r" not in shown.output
    steps = [line for line in shown.output.splitlines() if line.startswith("step ")]
    assert [line.split(",")[0].split()[1] for line in steps] == ["1/20", *(f"{n}/20" for n in range(2, 21, 2))]
    quiet = CliRunner().invoke(main, [*arguments, "--out", str(tmp_path / "b.png"), "--quiet"])
    assert quiet.exit_code == 0 and quiet.output == "", quiet.output


EXPORT_LINES = [
    "loading /models/sd15",
    "text_encoder: exporting (fp32, cpu)",
    "text_encoder: max abs error 1.4e-06, max rel error 3.6e-07 (3.8s)",
    "text_encoder: LoRA map of 12 layers",
    "unet: exporting (fp32, cpu)",
    "unet: max abs error 4.8e-07, max rel error 5.1e-07 (18.2s)",
    "exported 2 components to engines/sd15",
]


def _export_progress(terminal: bool) -> str:
    from sdrt.cli.progress import ComponentLines

    written: list[str] = []
    lines = ComponentLines(terminal=terminal, write=lambda text, newline: written.append(text + "\n" * newline))
    for line in EXPORT_LINES:
        lines(line)
    lines.flush()
    return "".join(written)


@pytest.mark.parametrize("terminal", [False, True])
def test_export_progress_is_one_line_per_component(terminal):
    """Into a log each component's line is written once, whole; on a terminal it grows in place;
    both read the same, and lines about no component pass as they are."""
    assert _export_progress(terminal).splitlines() == [
        "loading /models/sd15",
        "text_encoder: exporting (fp32, cpu); max abs error 1.4e-06, max rel error 3.6e-07 (3.8s); "
        "LoRA map of 12 layers",
        "unet: exporting (fp32, cpu); max abs error 4.8e-07, max rel error 5.1e-07 (18.2s)",
        "exported 2 components to engines/sd15",
    ]
    assert "\r" not in _export_progress(terminal)


def _load_pipeline(folder, quiet: bool):
    import subprocess
    import sys

    load = f"from sdrt.export.sources import load_pipeline; load_pipeline({str(folder)!r})"
    if quiet:
        load = f"from sdrt.export.quiet import quiet_libraries; quiet_libraries(); {load}"
    return subprocess.run([sys.executable, "-c", load], capture_output=True, text=True)


@pytest.mark.slow
def test_the_libraries_under_an_export_print_nothing(tiny_models):
    """With quiet_libraries, loading a pipeline with diffusers prints nothing (the slow tier checks
    that the same load prints its bars and notices without it)."""
    quiet = _load_pipeline(tiny_models["standard"], quiet=True)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout == quiet.stderr == ""


@pytest.mark.slow  # 10 s: a second interpreter importing diffusers, to show the quiet test can fail
def test_the_libraries_under_an_export_are_loud_by_themselves(tiny_models):
    loud = _load_pipeline(tiny_models["standard"], quiet=False)
    assert loud.returncode == 0 and "Loading pipeline components" in loud.stderr
