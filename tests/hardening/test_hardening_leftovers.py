"""Leftovers of killed processes (issue 38, data loss): only the temporary folders sdrt made
(marked when made) are swept, never a user's file or folder that merely has a look-alike name;
an export killed at any point leaves nothing that stops the next export to the same place."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sdrt.cli import main
from sdrt.runtime.files import leftovers

ROOT = Path(__file__).resolve().parents[2]

# Each script runs sdrt's own code in a child process and kills it with SIGKILL at a chosen
# moment, so what it leaves is a real leftover of a dead process.
KILLED_EXPORT = """
import os, signal, sys
from pathlib import Path
from sdrt.export import staging as export_staging

out = Path(sys.argv[1])
real_rename = Path.rename

def rename(self, target):
    moved = real_rename(self, target)
    if Path(target).name == export_staging.PREVIOUS_DIR:  # the old folder moved aside, the new one not in place
        os.kill(os.getpid(), signal.SIGKILL)
    return moved

Path.rename = rename
with export_staging.staged(out, overwrite=True) as staging:
    (staging / "model.onnx").write_bytes(b"half")
"""
KILLED_PNG = """
import os, signal, sys
from pathlib import Path
from PIL import Image
from sdrt.runtime.imaging import png_info

Image.Image.save = lambda self, *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
png_info.save_png(Image.new("RGB", (8, 8)), Path(sys.argv[1]), "x")
"""
KILLED_CACHE_SAVE = """
import os, signal, sys
from pathlib import Path
from types import SimpleNamespace
import onnxruntime
from sdrt.runtime.engines import ort_cache

onnxruntime.InferenceSession = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
spec = SimpleNamespace(sha256="0" * 64, data_files={})
ort_cache.cached_session(Path("x.onnx"), spec, onnxruntime.SessionOptions, [])
"""


def _dead_child(script: str, *arguments: str, cwd: Path | None = None) -> None:
    """Run `script` in a child process, which kills itself."""
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    process = subprocess.run([sys.executable, "-c", script, *arguments], env=environment, capture_output=True, cwd=cwd)
    assert process.returncode == -signal.SIGKILL, process.stderr.decode()


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _user_look_alikes(folder: Path, dead: int, names: list[str]) -> list[Path]:
    """A user's files and folders with the names of sdrt's temporary ones, each holding data."""
    made = []
    for index, name in enumerate(names):
        path = folder / name.format(pid=dead)
        if index % 2:
            path.write_text("my notes")
        else:
            path.mkdir()
            (path / "chapter1.tex").write_text("my thesis")
        made.append(path)
    return made


def test_an_export_sweeps_only_what_killed_exports_left(tmp_path):
    from sdrt.export.staging import staged

    out = tmp_path / "model"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    _dead_child(KILLED_EXPORT, str(out))
    stale = sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".model."))
    assert len(stale) == 2 and not out.exists(), stale  # the partial one and the old one moved aside
    assert (tmp_path / stale[0] / "previous" / "manifest.json").is_file()  # .model.old-PID holds the old

    dead = _dead_pid()
    users = _user_look_alikes(
        tmp_path,
        dead,
        [".thesis.old-{pid}", ".notes.partial-{pid}", ".draft.partial-{pid}", ".model.old-{pid}.bak", ".x.old-{pid}"],
    )
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "kept.txt").write_text("kept")
    (tmp_path / f".link.old-{dead}").symlink_to(target, target_is_directory=True)
    with staged(tmp_path / "fresh", overwrite=False) as staging:  # the export's sweep runs here
        (staging / "manifest.json").write_text("{}")
    left = {path.name for path in tmp_path.iterdir()}
    assert not any(name in left for name in stale), left
    assert all(path.exists() for path in users) and (target / "kept.txt").read_text() == "kept"
    assert (tmp_path / f".link.old-{dead}").is_symlink()
    assert (users[0] / "chapter1.tex").read_text() == "my thesis" and users[1].read_text() == "my notes"


def test_a_re_export_after_one_killed_mid_way_succeeds(tmp_path):
    from sdrt.export.staging import staged

    out = tmp_path / "model"
    out.mkdir()
    (out / "manifest.json").write_text('{"old": true}')
    _dead_child(KILLED_EXPORT, str(out))
    with staged(out, overwrite=True) as staging:
        (staging / "manifest.json").write_text('{"new": true}')
    assert (out / "manifest.json").read_text() == '{"new": true}'
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]


def test_leftovers_of_an_earlier_process_with_this_process_id_are_swept(tmp_path):
    """Containers start each command with the same process id: a killed export's folders then
    carry the id of the next one, which must not take them for its own."""
    from sdrt.export.staging import staged

    out = tmp_path / "model"
    earlier = leftovers.make_temporary_dir(tmp_path / f".model.old-{os.getpid()}")
    (earlier / "previous").mkdir()
    leftovers._made.discard(os.path.abspath(earlier))  # as if a process before this one made it
    with staged(out, overwrite=True) as staging:
        (staging / "manifest.json").write_text("{}")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]


def test_generate_sweeps_only_sdrt_leftovers_beside_the_image_and_in_the_cache(exported_tiny, tmp_path, private_cache):
    out = tmp_path / "out"
    out.mkdir()
    _dead_child(KILLED_PNG, str(out / "x.png"))
    cache = private_cache / "ort"
    cache_before = set(cache.iterdir()) if cache.exists() else set()
    subprocess_cwd = tmp_path / "cwd"
    subprocess_cwd.mkdir()
    _dead_child(KILLED_CACHE_SAVE, cwd=subprocess_cwd)
    staged_cache = [path for path in cache.iterdir() if path not in cache_before and path.name.startswith(".")]
    stale_png = list(out.iterdir())
    assert len(stale_png) == 1 and len(staged_cache) == 1, (stale_png, staged_cache)

    dead = _dead_pid()
    users = _user_look_alikes(out, dead, [".sdrt-{pid}-abc123.partial", ".sdrt-{pid}-def456.partial"])
    cache_look_alike = cache / f".0123abcd.{dead}"
    cache_look_alike.mkdir()
    result = CliRunner().invoke(
        main, ["generate", "x", "--model", str(exported_tiny("standard")), "--steps", "1", "--out", str(out / "x.png")]
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(["x.png", *(path.name for path in users)])
    assert not staged_cache[0].exists() and cache_look_alike.exists()


@pytest.mark.parametrize("content", ["", "{}", '{"kind": "sdrt temporary folder", "pid": 1, "name": "other"}'])
def test_a_folder_is_swept_only_with_a_marker_naming_it_and_its_process(tmp_path, content):
    dead = _dead_pid()
    folder = tmp_path / f".a.old-{dead}"
    folder.mkdir()
    (folder / leftovers.MARKER_FILE).write_text(content)
    assert leftovers.remove_stale(tmp_path, re.compile(r"\..+\.old-(?P<pid>\d+)")) == []
    assert folder.exists()


def test_a_marked_folder_of_a_running_process_stays(tmp_path):
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    script = (
        "import os, sys; from pathlib import Path; from sdrt.runtime.files import leftovers; "
        "leftovers.make_temporary_dir(Path(sys.argv[1]) / f'.busy.partial-{os.getpid()}'); print(flush=True); "
        "sys.stdin.read()"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], env=environment, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as child:
        child.stdout.readline()
        busy = tmp_path / f".busy.partial-{child.pid}"
        assert leftovers.made_by_sdrt(busy, child.pid)
        assert leftovers.remove_stale(tmp_path, re.compile(r"\..+\.partial-(?P<pid>\d+)")) == []
        assert busy.exists()
        child.stdin.close()


@pytest.mark.slow  # about 30 s: one export killed half-way, one whole export
def test_a_real_export_killed_mid_way_then_run_again(exported_tiny, tiny_models, tmp_path):
    import shutil

    out = tmp_path / "model"
    shutil.copytree(exported_tiny("standard"), out)
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "sdrt.cli", "export", str(tiny_models["standard"]), "--out", str(out)]
    with subprocess.Popen(
        [*command, "--overwrite"], env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as child:
        for line in child.stdout:
            if line.startswith("unet: exporting"):  # the text encoder done, mid-way through the UNet
                child.kill()
                break
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert any(path.name.startswith(".model.partial-") for path in tmp_path.iterdir())
    result = CliRunner().invoke(main, ["export", str(tiny_models["standard"]), "--out", str(out), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]
    from sdrt.runtime.pipeline import Pipeline

    Pipeline.load(out)  # the export is whole
