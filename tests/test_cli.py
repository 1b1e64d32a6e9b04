"""The `sdrt` command line: output, exit codes, and that it runs without the export stack."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from sdrt.cli import main

NO_HEAVY_IMPORTS = Path(__file__).parent / "no_heavy_imports.py"


def test_tokenize_prints_ids(sd15_dir):
    result = CliRunner().invoke(main, ["tokenize", "a photo of a cat", "--model", str(sd15_dir)])
    assert result.exit_code == 0
    assert result.output.strip() == "49406 320 1125 539 320 2368 49407"


def test_tokenize_json_reports_dropped_text(sd15_dir):
    long_prompt = "word " * 80 + "tail end"
    result = CliRunner().invoke(main, ["tokenize", long_prompt, "--model", str(sd15_dir), "--json"])
    assert result.exit_code == 0
    (row,) = json.loads(result.output)
    assert row["length"] == 77 and len(row["input_ids"]) == 77
    assert row["dropped_text"].endswith("tail end")


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
        "from sdrt.runtime.scheduler_np import scheduler_from_config\n"
        f"r = CliRunner().invoke(main, ['tokenize', 'a cat', '--model', {str(sd15_dir)!r}])\n"
        "assert r.exit_code == 0, r.output\n"
        "import json\n"
        f"config = json.load(open({str(sd15_dir / 'scheduler' / 'scheduler_config.json')!r}))\n"
        "s = scheduler_from_config('lms', config)\n"
        "s.set_timesteps(20)\n"
        "x = np.ones((1, 4, 8, 8), np.float32) * s.init_noise_sigma\n"
        "for i in range(20):\n"
        "    x = s.step(0.1 * s.scale_model_input(x, i), i, x)\n"
        "assert np.isfinite(x).all()\n"
    )
    result = subprocess.run([sys.executable, str(NO_HEAVY_IMPORTS), code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
