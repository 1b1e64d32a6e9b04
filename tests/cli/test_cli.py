"""The `sdrt` command line: output, exit codes, and that it runs without the export stack."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sdrt.cli import main
from sdrt.errors import SdrtError

NO_HEAVY_IMPORTS = Path(__file__).parent.parent / "no_heavy_imports.py"


def test_tokenize_prints_ids(sd15_dir):
    result = CliRunner().invoke(main, ["tokenize", "a photo of a cat", "--model", str(sd15_dir)])
    assert result.exit_code == 0
    assert result.output.strip().splitlines() == [
        "chunk 1/1 (5 tokens in all):",
        "49406 320 1125 539 320 2368 49407",
        "<|startoftext|> a photo of a cat <|endoftext|>",
    ]


def test_tokenize_json_gives_every_chunk_with_its_weights(sd15_dir):
    long_prompt = "word " * 80 + "(tail:1.5) end"
    result = CliRunner().invoke(main, ["tokenize", long_prompt, "--model", str(sd15_dir), "--json"])
    assert result.exit_code == 0
    (row,) = json.loads(result.output)
    assert row["token_count"] == 82 and len(row["chunks"]) == 2
    first, second = row["chunks"]
    assert len(first["input_ids"]) == len(second["input_ids"]) == 77
    assert first["tokens"][1:76] == ["word"] * 75 and first["weights"] == [1.0] * 77
    assert second["tokens"][:9] == ["<|startoftext|>", *["word"] * 5, "tail", "end", "<|endoftext|>"]
    assert second["weights"][6:8] == [1.5, 1.0]


def test_user_errors_are_one_line_and_non_zero(tmp_path):
    result = CliRunner().invoke(main, ["tokenize", "x", "--model", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: tokenizer folder {tmp_path / 'missing'} does not exist"]
    assert "Traceback" not in result.output


def test_cli_and_runtime_import_no_heavy_packages(sd15_dir):
    code = (
        "import numpy as np\n"
        "from click.testing import CliRunner\n"
        "from sdrt.cli import main\n"
        "from sdrt.runtime.schedulers import sampler_from_config\n"
        f"r = CliRunner().invoke(main, ['tokenize', 'a cat', '--model', {str(sd15_dir)!r}])\n"
        "assert r.exit_code == 0, r.output\n"
        "import json\n"
        f"config = json.load(open({str(sd15_dir / 'scheduler' / 'scheduler_config.json')!r}))\n"
        "s = sampler_from_config('lms', config)\n"
        "s.set_timesteps(20)\n"
        "x = np.ones((1, 4, 8, 8), np.float32) * s.init_noise_sigma\n"
        "for i in range(20):\n"
        "    x = s.step(0.1 * s.scale_model_input(x, i), i, x)\n"
        "assert np.isfinite(x).all()\n"
    )
    result = subprocess.run([sys.executable, str(NO_HEAVY_IMPORTS), code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def engine(exported_tiny) -> Path:
    return exported_tiny("standard")


def test_generate_writes_png_with_a1111_parameters_and_info_reads_them(engine, tmp_path):
    out = tmp_path / "cat.png"
    result = CliRunner().invoke(
        main,
        [
            "generate",
            "a photo of a cat",
            "--model",
            str(engine),
            "--steps",
            "2",
            "--seed",
            "42",
            "--negative-prompt",
            "blurry",
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    from PIL import Image

    with Image.open(out) as image:
        assert image.size == (64, 64)
        text = image.info["parameters"]
    assert text == (
        "a photo of a cat\nNegative prompt: blurry\n"
        f"Steps: 2, Sampler: LMS, CFG scale: 7.5, Seed: 42, Size: 64x64, Model: {engine.name}"
    )
    shown = CliRunner().invoke(main, ["info", str(out), "--json"])
    assert json.loads(shown.output) == {
        "Prompt": "a photo of a cat",
        "Negative prompt": "blurry",
        "Steps": 2,
        "Sampler": "LMS",
        "CFG scale": 7.5,
        "Seed": 42,
        "Size": "64x64",
        "Model": engine.name,
    }


def test_generate_json_reports_outputs_and_timings(engine, tmp_path):
    result = CliRunner().invoke(
        main,
        [
            "generate",
            "a cat",
            "--model",
            str(engine),
            "--steps",
            "2",
            "--json",
            "--num-images",
            "2",
            "--out",
            str(tmp_path / "cats.png"),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["outputs"] == [str(tmp_path / "cats-1.png"), str(tmp_path / "cats-2.png")]
    assert all(Path(p).is_file() for p in report["outputs"])
    assert {"load", "text_encoder", "denoise", "vae_decoder", "png", "start_to_first_step"} <= set(report["timings"])
    second = CliRunner().invoke(main, ["info", report["outputs"][1], "--json"])
    assert json.loads(second.output)["Batch pos"] == 2


def test_generate_gives_image_k_seed_plus_k_each_reproducible_alone(engine, tmp_path):
    """A1111's rule: --num-images 2 --seed 7 makes seeds 7 and 8, each PNG records its own, and
    the second equals --seed 8 alone, pixel for pixel."""
    import numpy as np
    from PIL import Image

    common = ["generate", "a cat", "--model", str(engine), "--steps", "2", "--sampler", "euler_a", "--quiet"]
    batch = CliRunner().invoke(
        main, [*common, "--num-images", "2", "--seed", "7", "--json", "--out", str(tmp_path / "b")]
    )
    assert batch.exit_code == 0, batch.output
    report = json.loads(batch.output)
    assert report["parameters"]["seeds"] == [7, 8]
    seeds = [
        json.loads(CliRunner().invoke(main, ["info", path, "--json"]).output)["Seed"] for path in report["outputs"]
    ]
    assert seeds == [7, 8]
    alone = CliRunner().invoke(main, [*common, "--seed", "8", "--out", str(tmp_path / "alone.png")])
    assert alone.exit_code == 0, alone.output
    with Image.open(report["outputs"][1]) as second, Image.open(tmp_path / "alone.png") as expected:
        np.testing.assert_array_equal(np.asarray(second), np.asarray(expected))


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--height", "70"], "error: height 70 is not a multiple of 16, which this model needs: use 64 or 80"),
        (["--steps", "0"], "error: steps must be an integer from 1 to 10000, got 0"),
        (
            ["--guidance", "-2"],
            "error: Invalid value for '--guidance': must be >= 0, got '-2' (see sdrt generate --help)",
        ),
        (
            ["--scheduler", "dpm3"],
            "error: unknown sampler 'dpm3'; choose one of lms, euler, euler_a, ddim, dpmpp_2m, "
            "dpmpp_2m_karras, pndm, ddpm, heun, unipc, lcm, tcd, or a k-diffusion sampler by sdrt, A1111 or "
            "ComfyUI name: k_euler, k_euler_a, k_heun, k_dpm_2, k_dpm_2_a, k_lms, k_dpmpp_2m, k_dpmpp_2s_a, "
            "k_dpmpp_sde, k_dpmpp_2m_sde, k_dpmpp_2m_sde_heun, k_dpmpp_3m_sde, k_dpm_fast, k_dpm_ad, k_lcm, "
            "a1111_ddim, "
            "a1111_ddim_cfgpp, a1111_plms, a1111_unipc",
        ),
        (
            ["--out", "/nonexistent-dir/x.png"],
            "error: cannot write /nonexistent-dir/x.png: folder /nonexistent-dir does not exist",
        ),
        (["--num-images", "20"], "error: 20 images at once exceed this export's batch limit of 8"),
    ],
)
def test_generate_bad_inputs_are_one_line_errors(engine, tmp_path, arguments, message):
    result = CliRunner().invoke(
        main,
        ["generate", "a cat", "--model", str(engine), "--steps", "1", "--out", str(tmp_path / "x.png"), *arguments],
    )
    assert result.exit_code == 2
    assert result.output.strip() == message
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("name", ["none", "model.ckpt", "notes.txt", "folder"])
def test_generate_with_no_model_at_model_says_what_it_takes(tmp_path, name):
    """A missing path, a missing checkpoint, a file that is no model and a folder that is none:
    one line naming --model and what it takes, exit 2, nothing exported."""
    (tmp_path / "notes.txt").write_text("not a model")
    (tmp_path / "folder").mkdir()
    result = CliRunner().invoke(main, ["generate", "a cat", "--model", str(tmp_path / name)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --model {tmp_path / name} "), result.output
    assert "a diffusers folder, a .safetensors/.ckpt checkpoint or a hub id" in lines[0]
    if name in ("none", "model.ckpt"):
        assert "does not exist" in lines[0] and "`sdrt export MODEL --out DIR`" in lines[0]


@pytest.mark.slow
def test_generate_from_a_diffusers_folder_exports_it_once(tiny_models, exported_tiny, tmp_path, monkeypatch):
    """--model with a diffusers folder: exported once into $SDRT_CACHE, then the same image as
    generating from its export; a second run reuses the cached export."""
    import numpy as np
    from PIL import Image

    monkeypatch.setenv("SDRT_CACHE", str(tmp_path / "cache"))
    arguments = ["generate", "a cat", "--steps", "2", "--seed", "3", "--quiet"]
    direct = CliRunner().invoke(
        main, [*arguments, "--model", str(exported_tiny("standard")), "--out", str(tmp_path / "a.png")]
    )
    assert direct.exit_code == 0, direct.output
    source = str(tiny_models["standard"])
    first = CliRunner().invoke(main, [*arguments, "--model", source, "--out", str(tmp_path / "b.png")])
    assert first.exit_code == 0, first.output
    assert f"exporting --model {tiny_models['standard']} once into" in first.output
    assert len(list((tmp_path / "cache" / "models").iterdir())) == 1
    with Image.open(tmp_path / "a.png") as a, Image.open(tmp_path / "b.png") as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))
    again = CliRunner().invoke(main, [*arguments, "--model", source, "--out", str(tmp_path / "c.png")])
    assert again.exit_code == 0 and "exporting" not in again.output, again.output


def test_info_on_a_file_without_parameters(tmp_path):
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    result = CliRunner().invoke(main, ["info", str(tmp_path / "plain.png")])
    assert result.exit_code == 2 and "has no generation parameters" in result.output


def test_cli_import_loads_no_export_code():
    code = (
        "import sys, sdrt.cli\n"
        "bad = [m for m in sys.modules if m.startswith(('sdrt.export', 'torch', 'diffusers', 'onnx'))]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _generate_process(model: Path, out: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "sdrt.cli", "generate", "a cat", "--model", str(model)]
    command += ["--steps", "1000", "--sampler", "euler", "--seed", "1", "--out", str(out), *extra]
    return subprocess.Popen(command, stderr=subprocess.PIPE, text=True, preexec_fn=_interactive_signals)


def _interactive_signals() -> None:
    """Ctrl-C as a terminal's foreground process has it: a suite run in the background (`cmd &`)
    hands its children SIGINT ignored, which sdrt rightly leaves ignored."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_a_signal_stops_a_generation_at_a_step_boundary(exported_tiny, tmp_path, signum):
    """SIGTERM or Ctrl-C during `sdrt generate`'s loop: one line, exit 130, no image written."""
    import signal
    import time

    out = tmp_path / "never.png"
    process = _generate_process(exported_tiny("standard"), out)
    deadline = time.monotonic() + 60
    line = ""
    while "1/1000" not in line and time.monotonic() < deadline and process.poll() is None:
        line += process.stderr.read(1)  # until the progress lines show the loop running
    process.send_signal(getattr(signal, signum))
    _, errors = process.communicate(timeout=60)
    assert process.returncode == 130, line + errors
    assert errors.strip().splitlines()[-1] == "error: stopped by a signal at a step boundary; no image was written"
    assert "Traceback" not in errors and not out.exists()


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has a SIGTERM handler (Linux's /proc): sdrt installs its SIGINT and
    SIGTERM handlers together, and Python catches SIGINT alone by default."""
    import signal

    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


@pytest.mark.parametrize("delay", [0.0, 0.5])
def test_an_early_ctrl_c_is_one_line_and_exit_130(exported_tiny, tmp_path, delay):
    """Ctrl-C while sdrt imports onnxruntime or loads the model: one line, exit 130, no image,
    no traceback, no click "Aborted!". Sent once sdrt's handler is in place (`delay` seconds
    after): before it, in Python's own start (about 0.2 s, longer on a loaded machine), Python's
    default handler is the one that runs, and no program can change that."""
    import signal
    import time

    if not Path("/proc/self/status").is_file():
        pytest.skip("needs Linux's /proc to see when the handler is installed")
    out = tmp_path / "never.png"
    process = _generate_process(exported_tiny("standard"), out, "--quiet")
    deadline = time.monotonic() + 60
    while process.poll() is None and not _catches_sigterm(process.pid) and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, errors = process.communicate(timeout=60)
    assert process.returncode == 130, errors
    assert len(errors.strip().splitlines()) == 1 and errors.startswith("error: stopped by a signal"), errors
    assert not out.exists()


def test_info_on_an_export_says_its_sizes(engine):
    from sdrt.runtime.manifest import Manifest

    manifest = Manifest.load(engine)
    shown = CliRunner().invoke(main, ["info", str(engine)])
    assert shown.exit_code == 0, shown.output
    width = manifest.dims["width"]
    assert f"width: {width.min} to {width.max} in steps of {width.multiple}" in shown.output
    summary = json.loads(CliRunner().invoke(main, ["info", str(engine), "--json"]).output)
    assert summary["height"]["max"] == manifest.dims["height"].max and summary["max_prompt_tokens"] % 75 == 0
    assert set(summary["components"]) == set(manifest.components)
    assert all(c["mib"] > 0 for c in summary["components"].values())


@pytest.mark.slow
def test_random_export(tmp_path):
    """`sdrt export --random tiny` (a model built and exported: about 12 s, so in the slow tier)."""
    out = tmp_path / "random-tiny"
    made = CliRunner().invoke(main, ["export", "--random", "tiny", "--out", str(out)])
    assert made.exit_code == 0, made.output
    result = CliRunner().invoke(
        main,
        [
            "generate",
            "a photo of a cat",
            "--model",
            str(out),
            "--steps",
            "1",
            "--out",
            str(tmp_path / "cat.png"),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output


def test_the_default_model(engine, tmp_path, monkeypatch):
    """`sdrt generate` with no --model uses $SDRT_MODEL; with neither, offline, one line says how
    to point sdrt at a model."""
    import huggingface_hub
    from PIL import Image

    monkeypatch.setenv("SDRT_MODEL", str(engine))
    picture = tmp_path / "cat.png"
    result = CliRunner().invoke(
        main, ["generate", "a photo of a cat", "--steps", "1", "--out", str(picture), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    with Image.open(picture) as image:
        assert f"Model: {engine.name}" in image.info["parameters"]
    monkeypatch.delenv("SDRT_MODEL")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read when imported
    offline = CliRunner().invoke(main, ["generate", "a photo of a cat", "--steps", "1", "--quiet"])
    assert offline.exit_code != 0 and "Traceback" not in offline.output
    assert "--model DIR" in offline.output and "sdrt export --random tiny" in offline.output


def test_generate_with_a1111_styles(engine, tmp_path):
    from PIL import Image

    styles = tmp_path / "styles.csv"
    styles.write_text('name,prompt,negative_prompt\nCinematic,"{prompt}, cinematic still",blurry\n')
    out = tmp_path / "styled.png"
    result = CliRunner().invoke(
        main,
        [
            "generate",
            "a cat",
            "--model",
            str(engine),
            "--steps",
            "1",
            "--style",
            "Cinematic",
            "--styles",
            str(styles),
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    with Image.open(out) as image:
        assert image.info["parameters"].startswith("a cat, cinematic still\nNegative prompt: blurry\n")
    missing = CliRunner().invoke(main, ["generate", "a cat", "--model", str(engine), "--style", "Cinematic", "--quiet"])
    assert missing.exit_code == 2 and "--style needs --styles FILE" in missing.output
    unknown = CliRunner().invoke(
        main,
        [
            "generate",
            "a cat",
            "--model",
            str(engine),
            "--steps",
            "1",
            "--style",
            "Noir",
            "--styles",
            str(styles),
            "--quiet",
        ],
    )
    assert unknown.exit_code == 2 and "unknown style 'Noir'" in unknown.output


@pytest.mark.parametrize("raised", ["library", "sdrt"])
def test_an_error_a_signal_caused_is_reported_as_the_signal(engine, tmp_path, monkeypatch, raised):
    """onnxruntime interrupted while it creates a session says "initialization failed"; an
    exporter wraps the interruption in its own error: after a signal, either is the stop line."""
    from sdrt.cli import signals
    from sdrt.runtime.pipeline import Pipeline

    def interrupted_load(*args, **kwargs):
        signals.received.set()
        raise RuntimeError("initialization failed") if raised == "library" else SdrtError("cannot load X")

    monkeypatch.setattr(Pipeline, "load", interrupted_load)
    result = CliRunner().invoke(main, ["generate", "a cat", "--model", str(engine), "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 130 and result.output == "error: stopped by a signal; no image was written\n"


def test_ctrl_c_on_serve_shuts_down_then_says_so_in_one_line(exported_tiny):
    """Ctrl-C on `sdrt serve`: uvicorn's graceful shutdown, then sdrt's one line and exit 130
    (not generate's "no image was written", not a traceback)."""
    import signal
    import socket
    import time
    import urllib.request

    from sdrt.cli.serve import SERVE_STOPPED

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "sdrt.cli",
        "serve",
        "--model",
        str(exported_tiny("standard")),
        "--port",
        str(port),
    ]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, preexec_fn=_interactive_signals)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, errors = process.communicate(timeout=60)
    assert process.returncode == 130, errors
    assert errors.strip().splitlines()[-1] == SERVE_STOPPED and "Traceback" not in errors
