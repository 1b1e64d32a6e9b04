"""Numbers and text at the edges, and leftovers (issue 21, classes 6 and 7): non-finite numbers
and undecodable text are one line everywhere; output paths are checked before generating;
PNGs follow the umask (leftovers of killed processes: test_hardening_leftovers.py)."""

from __future__ import annotations

import itertools
import os
import stat
import subprocess
import sys

import pytest
from click.testing import CliRunner

from sdrt.cli import main
from support.hostile import assert_one_line_error, png_header

NON_FINITE = ["nan", "inf", "-inf", "1e999", "NaN", "abc", ""]
NUMBER_OPTIONS = {
    "--guidance": "generate",
    "--strength": "generate",
    "--timeout": "serve",
    "--batch-window-ms": "serve",
    "--cpus-per-replica": "serve",
    "--gpus-per-replica": "serve",
    "--workspace-gb": "build",
}


@pytest.mark.parametrize("option, value", list(itertools.product(NUMBER_OPTIONS, NON_FINITE)))
def test_non_finite_numbers_are_refused_in_one_line(exported_tiny, tmp_path, option, value):
    folder = str(exported_tiny("standard"))
    command = NUMBER_OPTIONS[option]
    arguments = {
        "generate": ["generate", "x", "--model", folder, "--out", str(tmp_path / "x.png")],
        "serve": ["serve", "--model", folder],
        "build": ["build", folder],
    }[command]
    assert_one_line_error(CliRunner().invoke(main, [*arguments, option, value]), option)


@pytest.mark.parametrize(
    "field, value", list(itertools.product(["guidance_scale", "strength"], [float("nan"), float("inf"), -float("inf")]))
)
def test_the_api_refuses_non_finite_numbers(exported_tiny, tmp_path, field, value):
    from PIL import Image

    from sdrt.errors import GenerationError
    from sdrt.runtime.pipeline import Pipeline

    pipeline = Pipeline.load(exported_tiny("standard"))
    with pytest.raises(GenerationError) as caught:
        pipeline.generate("x", steps=1, init_image=Image.new("RGB", (64, 64)), **{field: value})
    assert caught.value.param == field


UNDECODABLE = [b"a\xff", b"\x80", b"caf\xe9", b"\xc3", b"ok \xed\xa0\x80 surrogate", b"\xf8\x88\x80\x80\x80"]


@pytest.mark.parametrize("command", ["generate", pytest.param("tokenize", marks=pytest.mark.slow)])
def test_invalid_utf8_prompts_are_one_line(exported_tiny, tmp_path, command):
    folder = str(exported_tiny("standard"))
    for prompt in UNDECODABLE:
        text = prompt.decode("utf-8", "surrogateescape")
        extra = ["--out", str(tmp_path / "x.png"), "--steps", "1"] if command == "generate" else []
        line = assert_one_line_error(CliRunner().invoke(main, [command, text, "--model", folder, *extra]))
        assert "not valid UTF-8" in line, line
    # The real path: bytes from the shell, in a new process.
    done = subprocess.run(
        [sys.executable, "-m", "sdrt.cli", command, b"a\xff", "--model", folder, *extra],
        capture_output=True,
        text=True,
        errors="replace",
    )
    assert_one_line_error(done, "not valid UTF-8")


def _png_with_text(kind: bytes, size: int) -> bytes:
    import zlib

    # zTXt: keyword, NUL, compression method 0, deflated text; tEXt: keyword, NUL, text.
    payload = b"parameters\0" + (b"\0" + zlib.compress(b"x" * size) if kind == b"zTXt" else b"x" * size)
    return png_header(8, 8, [(kind, payload)])


@pytest.mark.parametrize(
    "label, data",
    [
        ("pixel bomb", png_header(100_000, 100_000)),
        ("70 MB text", _png_with_text(b"tEXt", 70 * 2**20)),
        ("zTXt bomb", _png_with_text(b"zTXt", 50 * 2**20)),
        ("not an image", b"\x89PNG garbage"),
        ("empty", b""),
    ],
)
def test_info_on_hostile_files_is_one_line(tmp_path, label, data):
    path = tmp_path / "hostile.png"
    path.write_bytes(data)
    assert_one_line_error(CliRunner().invoke(main, ["info", str(path)]))


NAMES = ["a" * 300 + ".png", "é" * 128 + ".png", "b" * 252 + ".png"]


@pytest.mark.parametrize("name", NAMES)
def test_output_names_are_checked_before_generating(exported_tiny, tmp_path, name):
    result = CliRunner().invoke(
        main,
        ["generate", "x", "--model", str(exported_tiny("standard")), "--steps", "1", "--out", str(tmp_path / name)],
    )
    if len(os.fsencode(name)) <= 255:  # a long but valid name works (the temporary name is short)
        assert result.exit_code == 0 and (tmp_path / name).is_file(), result.output
        return
    assert_one_line_error(result, "file name is")
    assert list(tmp_path.iterdir()) == []


def test_every_output_path_is_checked_first_and_a_folder_takes_the_images(exported_tiny, tmp_path):
    folder = str(exported_tiny("standard"))
    (tmp_path / "b-2.png").mkdir()
    result = CliRunner().invoke(
        main,
        ["generate", "x", "--model", folder, "--steps", "1", "--num-images", "2", "--out", str(tmp_path / "b.png")],
    )
    assert_one_line_error(result, "it is a folder")
    assert not (tmp_path / "b-1.png").exists()
    out = tmp_path / "images"
    out.mkdir()
    result = CliRunner().invoke(
        main,
        ["generate", "x", "--model", folder, "--steps", "1", "--num-images", "2", "--seed", "5", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["sdrt-5-1.png", "sdrt-5-2.png"]


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_pngs_follow_the_umask(exported_tiny, tmp_path, mask):
    previous = os.umask(mask)
    try:
        result = CliRunner().invoke(
            main,
            [
                "generate",
                "x",
                "--model",
                str(exported_tiny("standard")),
                "--steps",
                "1",
                "--out",
                str(tmp_path / "x.png"),
            ],
        )
    finally:
        os.umask(previous)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE((tmp_path / "x.png").stat().st_mode) == 0o666 & ~mask


@pytest.mark.parametrize("port", ["99999", "-1", "65536", "http"])
def test_serve_refuses_impossible_ports(exported_tiny, port):
    result = CliRunner().invoke(main, ["serve", "--model", str(exported_tiny("standard")), "--port", port])
    assert_one_line_error(result, "--port")


@pytest.mark.parametrize("height", ["7", "100000", "-16"])
def test_bench_with_a_bad_size_says_why(exported_tiny, height):
    result = CliRunner().invoke(
        main, ["bench", "--model", str(exported_tiny("standard")), "--height", height, "--runs", "1", "--warmup", "0"]
    )
    assert_one_line_error(result, "height")
