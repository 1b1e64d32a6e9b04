"""A first image in two commands: with no --model and no $SDRT_MODEL, `sdrt generate` runs the
default model, a ready ONNX export fetched once from the hub with huggingface_hub (no torch).
The download is replaced by a local hub cache laid out as huggingface_hub lays it out (blobs named
by their hash, snapshots linking to them, a ref naming the commit), holding a tiny export in
diffusers' ONNX layout; from there the code path is the real one."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdrt.cli import hub_model

NO_HEAVY_IMPORTS = Path(__file__).parent.parent / "no_heavy_imports.py"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
#: Files at least this large are LFS files on the hub (blob named by sha256), smaller ones git
#: files (blob named by git's sha1), as in the real repository.
LFS_FROM_BYTES = 10_000
#: A closed local port as the hub's address: nothing answers, nothing leaves the machine.
UNREACHABLE = "http://127.0.0.1:9"
SIZE = ["--width", "64", "--height", "64", "--seed", "7"]
#: Generous: the offline answer must not wait on retries (it takes about a second here).
OFFLINE_ANSWER_WITHIN_S = 20


def _blob_name(content: bytes) -> str:
    if len(content) >= LFS_FROM_BYTES:
        return hashlib.sha256(content).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _fake_hub(export: Path, hub: Path) -> Path:
    """`export` without its manifest (diffusers' ONNX layout) as the default model's snapshot."""
    repo = hub / ("models--" + hub_model.DEFAULT_REPO.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    for path in sorted(export.rglob("*")):
        if not path.is_file() or path.name == "manifest.json":
            continue
        content = path.read_bytes()
        blob = repo / "blobs" / _blob_name(content)
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(content)
        link = snapshot / path.relative_to(export)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / hub_model.DEFAULT_REVISION).write_text(COMMIT)
    return snapshot


@pytest.fixture(scope="module")
def hub(exported_tiny, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hub")
    _fake_hub(exported_tiny("standard"), root)
    return root


def _env(hub: Path, cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SDRT_MODEL", "HF_HUB_OFFLINE")}
    env.update(HF_HUB_CACHE=str(hub), HF_ENDPOINT=UNREACHABLE, SDRT_CACHE=str(cache))
    return env


def _generate(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    code = f"import sys; from sdrt.cli import main; sys.argv = ['sdrt'] + {args!r}; main()"
    return subprocess.run(
        [sys.executable, str(NO_HEAVY_IMPORTS), code], capture_output=True, text=True, env=env, cwd=cwd
    )


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_the_default_model_runs_from_the_hub_cache_without_torch(hub, exported_tiny, tmp_path):
    env = _env(hub, tmp_path / "cache")
    first = _generate(["generate", "a photo of a cat", "--steps", "2", *SIZE, "--out", "cat.png"], env, tmp_path)
    assert first.returncode == 0, first.stderr
    assert "downloading" not in first.stderr, "a complete cached snapshot is not fetched again"
    # The same image as the export it was made from, named directly.
    direct = _generate(
        [
            "generate",
            "a photo of a cat",
            "--steps",
            "2",
            *SIZE,
            "--model",
            str(exported_tiny("standard")),
            "--out",
            "d.png",
        ],
        env,
        tmp_path,
    )
    assert direct.returncode == 0, direct.stderr
    np.testing.assert_array_equal(_pixels(tmp_path / "cat.png"), _pixels(tmp_path / "d.png"))
    record = tmp_path / "cache" / hub_model.CHECKED_FOLDER / f"{COMMIT}.json"
    assert record.is_file(), "the snapshot's files were checked and the check recorded"


def test_offline_without_the_model_is_one_line_at_once(tmp_path):
    env = _env(tmp_path / "empty-hub", tmp_path / "cache")
    start = time.monotonic()
    result = _generate(["generate", "a photo of a cat", "--out", "cat.png"], env, tmp_path)
    elapsed = time.monotonic() - start
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot be reached" in lines[0] and "--model" in lines[0] and "sdrt export --random tiny" in lines[0]
    assert elapsed < OFFLINE_ANSWER_WITHIN_S
    assert not (tmp_path / "cat.png").exists()


def test_a_damaged_file_of_the_default_model_is_named(hub, tmp_path):
    damaged = tmp_path / "hub"
    shutil.copytree(hub, damaged, symlinks=True)
    snapshot = damaged / ("models--" + hub_model.DEFAULT_REPO.replace("/", "--")) / "snapshots" / COMMIT
    blob = Path(os.path.realpath(snapshot / "unet" / "model.onnx"))
    content = bytearray(blob.read_bytes())
    content[-100] ^= 0xFF  # one byte of a weight: the graph still loads, the image would change
    blob.write_bytes(bytes(content))
    result = _generate(["generate", "a cat", *SIZE, "--out", "cat.png"], _env(damaged, tmp_path / "cache"), tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "unet/model.onnx is damaged" in result.stderr
    assert not (tmp_path / "cat.png").exists()


def test_the_download_says_what_it_fetches_and_a_failure_is_one_line(hub, tmp_path, monkeypatch):
    """The download path with the hub's answer replaced: the line before it, and a failing fetch
    (here huggingface_hub's own error for a gated repository) as one line with the fix."""
    import huggingface_hub
    from huggingface_hub import errors

    # The HTTP library huggingface_hub answers with (its errors carry that library's response).
    http = sys.modules[errors.Response.__module__.split(".")[0]]

    calls = []
    snapshot = hub / ("models--" + hub_model.DEFAULT_REPO.replace("/", "--")) / "snapshots" / COMMIT

    def fake_download(repo_id, revision, allow_patterns, local_files_only):
        calls.append((repo_id, revision, local_files_only))
        if local_files_only:
            raise FileNotFoundError("not cached")
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    monkeypatch.setattr(hub_model, "hub_reachable", lambda endpoint=None: True)
    monkeypatch.setenv("SDRT_CACHE", str(tmp_path / "cache"))
    said: list[str] = []
    assert hub_model.fetch_default(said.append, progress=False) == snapshot
    assert calls == [(hub_model.DEFAULT_REPO, "onnx", True), (hub_model.DEFAULT_REPO, "onnx", False)]
    assert len(said) == 1 and hub_model.DEFAULT_LICENSE in said[0] and "GB" in said[0]

    def gated(repo_id, revision, allow_patterns, local_files_only):
        if local_files_only:
            raise FileNotFoundError("not cached")
        answer = http.Response(401, request=http.Request("GET", "https://huggingface.co/api/models/x"))
        raise errors.GatedRepoError("401 Client Error.\nCannot access gated repo for url ...", response=answer)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", gated)
    with pytest.raises(
        hub_model.SdrtError, match=r"^downloading the default model .* failed: 401 Client Error\.; pass"
    ):
        hub_model.fetch_default(said.append, progress=False)


def test_an_unreachable_hub_is_answered_within_the_timeout():
    start = time.monotonic()
    assert not hub_model.hub_reachable(UNREACHABLE)
    assert not hub_model.hub_reachable("https://name.invalid")
    assert time.monotonic() - start < 4 * hub_model.REACH_TIMEOUT_S
