"""Where the commands write (issue 38): an output path that is empty, a folder named like a PNG,
a FIFO or another non-regular file is refused in one line before any work, and never replaced;
a report that cannot be written (a full disk, a missing folder) is one line, not a traceback."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from sdrt.cli import main
from support.hostile import assert_one_line_error

FULL_DEVICE = Path("/dev/full")  # every write fails with ENOSPC


def _generate(model: Path, *arguments: str):
    return CliRunner().invoke(main, ["generate", "x", "--model", str(model), "--steps", "1", *arguments])


def test_generate_never_replaces_a_fifo_and_refuses_before_loading(tmp_path, monkeypatch):
    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    # No model exists: a refusal before any work says nothing of it.
    result = _generate(tmp_path / "no-such-model", "--out", str(fifo))
    assert_one_line_error(result, "not a regular file")
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    link = tmp_path / "link.png"
    link.symlink_to(fifo)
    assert_one_line_error(_generate(tmp_path / "no-such-model", "--out", str(link)), "not a regular file")
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and link.is_symlink()


@pytest.mark.parametrize("out", ["", "  "])
def test_generate_refuses_an_empty_out(tmp_path, monkeypatch, out):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(_generate(tmp_path / "no-such-model", "--out", out), "--out is empty")
    assert list(tmp_path.iterdir()) == []


def test_generate_refuses_a_folder_named_like_a_png(tmp_path):
    folder = tmp_path / "picture.png"
    folder.mkdir()
    assert_one_line_error(_generate(tmp_path / "no-such-model", "--out", str(folder)), "it is a folder")
    assert list(folder.iterdir()) == []


def test_save_png_never_replaces_a_non_regular_file(tmp_path):
    from PIL import Image

    from sdrt.runtime.imaging.png_info import ImageFileError, save_png

    fifo = tmp_path / "late.png"
    os.mkfifo(fifo)  # made after the command's checks: the writer itself refuses it too
    with pytest.raises(ImageFileError, match="not a regular file"):
        save_png(Image.new("RGB", (8, 8)), fifo, "x")
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and sorted(p.name for p in tmp_path.iterdir()) == ["late.png"]


def test_a_preview_is_never_written_into_a_fifo(exported_tiny, tmp_path):
    fifo = tmp_path / "x-step-1.png"
    os.mkfifo(fifo)
    arguments = ["--steps", "2", "--preview", "1", "--out", str(tmp_path / "x.png"), "--quiet"]
    result = _generate(exported_tiny("standard"), *arguments)
    assert_one_line_error(result, "not a regular file")
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


@pytest.mark.parametrize("kind", ["fifo", "file", "empty"])
def test_export_refuses_an_out_that_is_not_a_folder(tmp_path, kind):
    out = tmp_path / "engines"
    if kind == "fifo":
        os.mkfifo(out)
    elif kind == "file":
        out.write_text("mine")
    arguments = ["export", "--random", "tiny", "--overwrite", "--out", "" if kind == "empty" else str(out)]
    message = assert_one_line_error(CliRunner().invoke(main, arguments))
    assert {"empty": "--out is empty", "fifo": "not a folder", "file": "is a file"}[kind] in message
    if kind == "fifo":
        assert stat.S_ISFIFO(out.lstat().st_mode)
    elif kind == "file":
        assert out.read_text() == "mine"


@pytest.mark.parametrize("where", ["missing-folder/report.json", "a-folder", ""])
def test_bench_refuses_a_report_path_before_measuring(exported_tiny, tmp_path, where):
    (tmp_path / "a-folder").mkdir()
    path = str(tmp_path / where) if where else ""
    result = CliRunner().invoke(main, ["bench", "--model", "no-such-model", "--json", path])
    assert_one_line_error(result, "--json")


@pytest.mark.skipif(not FULL_DEVICE.exists(), reason="needs /dev/full")
def test_bench_into_a_full_disk_ends_in_one_error_line(exported_tiny):
    arguments = ["bench", "--model", str(exported_tiny("standard")), "--steps", "1", "--runs", "1", "--warmup", "0"]
    result = CliRunner().invoke(main, [*arguments, "--json", str(FULL_DEVICE)])
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == [result.output.splitlines()[-1]] and "cannot write --json /dev/full" in errors[0], result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
