"""Integrity (issue 21, class 1): a model folder whose files are not the ones its manifest
describes is never used, whether or not the optimized-graph cache is warm; manifest paths stay
inside the folder; engines whose graphs do not fit the manifest fail at load."""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from sdrt.cli import main
from sdrt.errors import ModelFolderError
from sdrt.runtime.manifest import Manifest
from sdrt.runtime.pipeline import Pipeline
from support.hostile import assert_one_line_error, copy_model

COMPONENTS = ("text_encoder", "unet", "vae_decoder")


def _empty(path: Path, folder: Path) -> None:
    path.write_bytes(b"")


def _truncated(path: Path, folder: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path: Path, folder: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, path.stat().st_size, dtype=np.uint8).tobytes())


def _swapped(path: Path, folder: Path) -> None:
    other = "vae_decoder" if path.parent.name != "vae_decoder" else "text_encoder"
    shutil.copyfile(folder / other / "model.onnx", path)  # a valid ONNX file, the wrong one


def _appended(path: Path, folder: Path) -> None:
    with open(path, "ab") as handle:
        handle.write(b"\0")


def _stealth(path: Path, folder: Path) -> None:
    """Same size, one byte flipped in place, modification time set back."""
    stat = path.stat()
    with open(path, "r+b") as handle:
        handle.seek(stat.st_size // 2)
        byte = handle.read(1)
        handle.seek(stat.st_size // 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


CORRUPTIONS = {f.__name__.strip("_"): f for f in (_empty, _truncated, _garbage, _swapped, _appended, _stealth)}


@pytest.mark.parametrize("component, corruption, warm", list(itertools.product(COMPONENTS, CORRUPTIONS, (True, False))))
def test_a_changed_graph_file_is_refused(exported_tiny, tmp_path, component, corruption, warm):
    folder = copy_model(exported_tiny("standard"), tmp_path / "model")
    if warm:  # the optimized-graph cache and the digest cache now hold this model
        Pipeline.load(folder)
    path = folder / component / "model.onnx"
    CORRUPTIONS[corruption](path, folder)
    with pytest.raises(ModelFolderError) as caught:
        Pipeline.load(folder)
    message = str(caught.value)
    assert str(path) in message and "re-export" in message
    assert "\n" not in message


def test_an_unchanged_copy_loads_and_a_changed_file_is_caught_by_the_cli(exported_tiny, tmp_path):
    folder = copy_model(exported_tiny("standard"), tmp_path / "model")
    runner = CliRunner()
    good = runner.invoke(
        main,
        ["generate", "a cat", "--model", str(folder), "--steps", "1", "--out", str(tmp_path / "ok.png"), "--quiet"],
    )
    assert good.exit_code == 0, good.output
    _truncated(folder / "unet" / "model.onnx", folder)
    bad = runner.invoke(
        main, ["generate", "a cat", "--model", str(folder), "--steps", "1", "--out", str(tmp_path / "bad.png")]
    )
    assert_one_line_error(bad, "is not the file manifest.json describes")
    assert not (tmp_path / "bad.png").exists()


ESCAPES = [
    "../outside.onnx",
    "../../../../etc/passwd",
    "/etc/passwd",
    "unet/../../model.onnx",
    "a/b/../../../c",
    "",
    "C:\\model.onnx",
    "..\\..\\model.onnx",
]


@pytest.mark.parametrize("field, escape", list(itertools.product(("file", "data_files"), ESCAPES)))
def test_manifest_paths_stay_inside_the_folder(exported_tiny, tmp_path, field, escape):
    folder = copy_model(exported_tiny("standard"), tmp_path / "model")
    data = json.loads((folder / "manifest.json").read_text())
    spec = data["components"]["unet"]
    if field == "file":
        spec["file"] = escape
    else:
        spec["data_files"] = {escape: "0" * 64}
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelFolderError, match="not a path inside the model folder"):
        Manifest.load(folder)


def _rename(tensor: dict) -> None:
    tensor["name"] += "_renamed"


def _dtype(tensor: dict) -> None:
    tensor["dtype"] = {"float32": "float16", "float16": "float32", "int64": "int32", "int32": "int64"}[tensor["dtype"]]


def _rank(tensor: dict) -> None:
    tensor["shape"].append(1)


def _size(tensor: dict) -> None:
    fixed = [i for i, size in enumerate(tensor["shape"]) if isinstance(size, int)]
    tensor["shape"][fixed[-1]] += 1


EDITS = {f.__name__.strip("_"): f for f in (_rename, _dtype, _rank, _size)}


@pytest.mark.parametrize("component, side, edit", list(itertools.product(COMPONENTS, ("inputs", "outputs"), EDITS)))
def test_graphs_that_do_not_fit_the_manifest_fail_at_load(exported_tiny, tmp_path, component, side, edit):
    folder = copy_model(exported_tiny("standard"), tmp_path / "model")
    data = json.loads((folder / "manifest.json").read_text())
    tensors = data["components"][component][side]
    # The first tensor, or for the size edit the first with a fixed size (every side has one).
    candidates = [t for t in tensors if edit != "size" or any(isinstance(s, int) for s in t["shape"])]
    EDITS[edit](candidates[0])
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelFolderError, match=f"the {component} graph's"):
        Pipeline.load(folder)
