"""Hostile user files (issue 38): torch files that lie about their tensors or are zip bombs,
malformed LoRA files and folders, bad embedding files in a folder, special files (FIFOs,
devices) wherever sdrt reads a file, and damaged entries of the ONNX Runtime graph cache."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from sdrt.errors import ConfigError, GenerationError, ModelFolderError
from sdrt.runtime.features.lora.files import read_lora
from sdrt.runtime.features.lora.library import LoraLibrary
from sdrt.runtime.features.lora.weights_map import LoraError
from sdrt.runtime.files import torch_files
from sdrt.runtime.files.json_files import read_json
from sdrt.runtime.files.torch_files import TorchFileError, load_torch_file
from sdrt.runtime.imaging.inputs import InputImageError, open_image
from sdrt.runtime.text.embeddings import EmbeddingError, EmbeddingSource, load_embeddings, read_embedding
from sdrt.runtime.text.prompts.styles import load_styles
from support.hostile import assert_one_line_error, tensor_view, torch_zip

STORAGE = 32  # float32 elements of the storage the hostile tensors sit over
RAW = np.arange(STORAGE, dtype=np.float32).tobytes()
QUICK_SECONDS = 20  # a refusal is at once; a hang is what these tests catch
LAYER = "lora_unet_down_blocks_0_attentions_0_proj_in"
#: (offset, shape, strides) that torch.save writes for real tensors: read as torch reads them.
VALID_LAYOUTS = [
    (0, (4, 8), (8, 1)),
    (3, (5,), (2,)),
    (1, (4, 3), (1, 4)),  # a transposed view
    (2, (3, 4), (0, 1)),  # an expanded (broadcast) row
    (31, (1,), (1,)),  # the storage's last element
    (STORAGE, (0, 4), (4, 1)),  # empty, at the storage's end
    (5, (), ()),  # a scalar
]
#: Layouts past the storage, negative, overflowing or not numbers: each must be refused.
HOSTILE_LAYOUTS = {
    "far out-of-bounds offset": (2**40, (4,), (1,)),
    "small out-of-bounds offset": (30, (4,), (1,)),
    "30M x 32 over 32 floats": (0, (30_000_000, 32), (32, 1)),
    "stride past the end": (0, (4, 4), (16, 1)),
    "negative stride": (8, (4,), (-1,)),
    "negative offset": (-4, (2,), (1,)),
    "negative shape": (0, (-2, 4), (4, 1)),
    "overflowing shape": (0, (2**62, 2**62), (1, 1)),
    "float shape": (0, (2.5,), (1,)),
    "bool offset": (True, (2,), (1,)),
    "shape and strides of different lengths": (0, (2, 2), (1,)),
    "empty tensor past the storage": (STORAGE + 8, (0,), (1,)),
}


def finishes(function, *args):
    """What `function(*args)` returns or raises, failing the test if it does not finish at
    once (it runs in a daemon thread, so a hang cannot hold the test run)."""
    outcome = {}

    def run():
        try:
            outcome["value"] = function(*args)
        except BaseException as error:  # noqa: BLE001 (handed to the test)
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(QUICK_SECONDS)
    assert not thread.is_alive(), f"{function.__name__}{args} did not finish in {QUICK_SECONDS} s"
    return outcome


def refused(error_type, function, *args) -> str:
    outcome = finishes(function, *args)
    assert "value" not in outcome, f"{function.__name__}{args} accepted a hostile file"
    assert isinstance(outcome["error"], error_type), repr(outcome["error"])
    return str(outcome["error"])


@pytest.fixture()
def fifo(tmp_path) -> Path:
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return path


def header_file(path: Path, header_text: str, data: bytes = b"") -> Path:
    """A safetensors file with this header text, written by hand (it may be anything)."""
    raw = header_text.encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


# -- torch files: tensors checked against their storages ------------------------------------


@pytest.mark.parametrize("offset, shape, stride", VALID_LAYOUTS)
def test_torch_file_tensors_equal_torch_load(tmp_path, offset, shape, stride):
    path = torch_zip(tmp_path / "t.pt", {"a": tensor_view("0", STORAGE, offset, shape, stride)}, {"0": RAW})
    expected = torch.load(path, weights_only=True)["a"].numpy()
    got = load_torch_file(path)["a"]
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("label", HOSTILE_LAYOUTS)
def test_torch_file_tensors_outside_their_storage_are_refused(tmp_path, label):
    offset, shape, stride = HOSTILE_LAYOUTS[label]
    path = torch_zip(tmp_path / "t.pt", {"a": tensor_view("0", STORAGE, offset, shape, stride)}, {"0": RAW})
    message = refused(TorchFileError, load_torch_file, path)
    assert str(path) in message


def test_torch_zip_bombs_are_refused_before_they_inflate(tmp_path):
    elements = (torch_files.EXPANSION_FLOOR_BYTES + 2**20) // 4
    bomb = torch_zip(
        tmp_path / "bomb.pt",
        {"a": tensor_view("0", elements, 0, (elements,), (1,))},
        {"0": bytes(4 * elements)},
        compress=True,
    )
    assert bomb.stat().st_size < 2**20  # a megabyte at most that declares more than the budget
    assert "declares" in refused(TorchFileError, load_torch_file, bomb)
    # A small storage copied into one huge tensor (a zero stride) is the same bomb, caught as it is built.
    broadcast = torch_zip(tmp_path / "b.pt", {"a": tensor_view("0", STORAGE, 0, (elements,), (0,))}, {"0": RAW})
    assert "expands to more than" in refused(TorchFileError, load_torch_file, broadcast)
    # A file of one kind has its own bound (an embedding is kilobytes).
    honest = torch_zip(tmp_path / "h.pt", {"a": tensor_view("0", 2**18, 0, (2**18,), (1,))}, {"0": bytes(2**20)})
    assert load_torch_file(honest)["a"].shape == (2**18,)
    assert "larger than" in refused(TorchFileError, load_torch_file, honest, 2**19)


def test_damaged_pickles_are_one_torch_file_error(tmp_path):
    path = tmp_path / "t.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02X\x02\x00\x00\x00\xff\xfeq\x00.")  # not UTF-8
    assert "not a readable torch file" in refused(TorchFileError, load_torch_file, path)


# -- LoRA files -----------------------------------------------------------------------------


def lora_header(down_shape, alpha_entry=None) -> str:
    entries = {
        f"{LAYER}.lora_down.weight": {"dtype": "F32", "shape": down_shape, "data_offsets": [0, 16]},
        f"{LAYER}.lora_up.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
    }
    if alpha_entry is not None:
        entries[f"{LAYER}.alpha"] = alpha_entry
    return json.dumps(entries)


def hostile_loras(folder: Path) -> dict[str, tuple[Path, str]]:
    """File -> (path, the key its error must name)."""
    folder.mkdir(exist_ok=True)
    down, up, alpha = f"{LAYER}.lora_down.weight", f"{LAYER}.lora_up.weight", f"{LAYER}.alpha"
    factors = {down: np.ones((2, 2), np.float32), up: np.ones((2, 2), np.float32)}
    nested = "[" * 50_000 + "]" * 50_000
    files = {
        "negative_shape": (header_file(folder / "negative_shape.safetensors", lora_header([-2, 2]), bytes(16)), down),
        "overflowing_shape": (
            header_file(folder / "overflowing_shape.safetensors", lora_header([2**62, 2**62]), bytes(16)),
            down,
        ),
        "nested_header": (header_file(folder / "nested_header.safetensors", f'{{"a": {nested}}}'), "nested"),
        "vector_alpha": (folder / "vector_alpha.safetensors", alpha),
        "empty_alpha": (folder / "empty_alpha.safetensors", alpha),
        "string_alpha": (folder / "string_alpha.safetensors", "lora_alpha"),
        "vector_factor": (folder / "vector_factor.safetensors", down),
        "nan_factor": (folder / "nan_factor.safetensors", up),
    }
    save_file({**factors, alpha: np.ones(3, np.float32)}, str(files["vector_alpha"][0]))
    save_file({**factors, alpha: np.ones(0, np.float32)}, str(files["empty_alpha"][0]))
    peft = {"unet.lora_alpha": "strong"}
    save_file(
        {f"unet.{LAYER}.lora_A.weight": factors[down], f"unet.{LAYER}.lora_B.weight": factors[up]},
        str(files["string_alpha"][0]),
        metadata={"lora_adapter_metadata": json.dumps(peft)},
    )
    save_file({down: np.ones(2, np.float32), up: factors[up]}, str(files["vector_factor"][0]))
    save_file({down: factors[down], up: np.full((2, 2), np.nan, np.float32)}, str(files["nan_factor"][0]))
    return files


def test_malformed_lora_files_are_lora_errors_naming_the_file_and_key(tmp_path):
    for label, (path, key) in hostile_loras(tmp_path / "loras").items():
        message = refused(LoraError, read_lora, path, None, label)
        assert label in message and key in message, message
        assert str(tmp_path) not in message  # named as the client named it, never by the server's path


def test_a_hostile_pt_lora_is_a_lora_error_named_as_the_client_named_it(tmp_path):
    folder = tmp_path / "loras"
    folder.mkdir()
    tree = {
        f"{LAYER}.lora_down.weight": tensor_view("0", STORAGE, 2**40, (2, 2), (2, 1)),
        f"{LAYER}.lora_up.weight": tensor_view("0", STORAGE, 0, (2, 2), (2, 1)),
    }
    torch_zip(folder / "evil.pt", tree, {"0": RAW})
    library = LoraLibrary(folder)
    error = refused(GenerationError, library.read, "evil")
    assert "evil" in error and str(folder) not in error
    outcome = finishes(library.read, "evil")
    assert outcome["error"].param == "loras"  # what the servers turn into a 4xx naming the field


def test_a_lora_folder_lists_its_good_files_and_flags_the_bad(tmp_path, capsys):
    folder = tmp_path / "loras"
    bad = hostile_loras(folder)
    save_file({f"{LAYER}.lora_down.weight": np.ones((2, 2), np.float32)}, str(folder / "good.safetensors"), {"k": "v"})
    os.mkfifo(folder / "pipe.safetensors")
    listed = {entry.name: entry for entry in finishes(LoraLibrary(folder).listing)["value"]}
    assert listed["good"].bad is None and listed["good"].metadata == {"k": "v"}
    header_bad = {"negative_shape", "overflowing_shape", "nested_header"}  # what a header shows
    assert {name for name, entry in listed.items() if entry.bad} == header_bad
    assert "pipe" not in listed  # not a regular file: not a LoRA
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == len(header_bad) and all(str(tmp_path) not in line for line in warnings)
    assert set(listed) == {"good", *bad}


# -- embeddings -----------------------------------------------------------------------------


def test_bad_files_in_an_embeddings_folder_are_skipped_and_the_rest_load(tmp_path):
    folder = tmp_path / "embeddings"
    folder.mkdir()
    save_file({"emb_params": np.ones((1, 32), np.float32)}, str(folder / "good.safetensors"))
    save_file({"emb_params": np.ones((1, 32), np.float32)}, str(folder / "second.safetensors"))
    (folder / "text.pt").write_bytes(b"\xff\xfe not UTF-8, not a zip")
    (folder / "header.safetensors").write_bytes(struct.pack("<Q", 4) + b"\xff\xfe\xfd\xfc")
    (folder / "bad\udcffname.safetensors").write_bytes((folder / "good.safetensors").read_bytes())
    torch_zip(folder / "huge.pt", {"a": tensor_view("0", STORAGE, 0, (30_000_000, 32), (32, 1))}, {"0": RAW})
    os.mkfifo(folder / "pipe.pt")
    found = finishes(load_embeddings, [EmbeddingSource(folder)], lambda embedding: None)["value"]
    assert found.names() == ["good", "second"]
    assert set(found.skipped) == {"text", "header", "bad\\xffname", "huge"}
    for reason in found.skipped.values():
        reason.encode("utf-8")  # printable: a warning line, a JSON listing


def test_a_hostile_embedding_named_on_its_own_is_one_error(tmp_path):
    huge = torch_zip(tmp_path / "huge.pt", {"a": tensor_view("0", STORAGE, 0, (30_000_000, 32), (32, 1))}, {"0": RAW})
    assert "reaches element" in refused(EmbeddingError, read_embedding, huge)
    elements = (torch_files.EXPANSION_FLOOR_BYTES + 2**20) // 4
    bomb = torch_zip(
        tmp_path / "bomb.pt", {"a": tensor_view("0", elements, 0, (elements,), (1,))}, {"0": bytes(4 * elements)}, True
    )
    assert "bomb.pt" in refused(EmbeddingError, read_embedding, bomb)


# -- special files --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reader, error, suffix",
    [
        (load_styles, ConfigError, ".csv"),
        (read_json, ModelFolderError, ".json"),
        (read_embedding, EmbeddingError, ".pt"),
        (read_lora, LoraError, ".safetensors"),
        (load_torch_file, TorchFileError, ".pt"),
        (open_image, InputImageError, ".png"),
    ],
)
def test_every_reader_refuses_fifos_and_devices_at_once(reader, error, suffix, tmp_path):
    pipe, device = tmp_path / f"pipe{suffix}", tmp_path / f"zero{suffix}"
    os.mkfifo(pipe)
    device.symlink_to("/dev/zero")
    assert "a FIFO, not a regular file" in refused(error, reader, pipe)
    assert "a device, not a regular file" in refused(error, reader, device)


def run_cli(*arguments: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, "-m", "sdrt.cli", *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
    )


@pytest.mark.slow
def test_the_cli_refuses_special_files_in_one_line(exported_tiny, fifo, tmp_path):
    model = str(exported_tiny("standard"))
    out = str(tmp_path / "o.png")
    assert_one_line_error(run_cli("info", str(fifo)), "a FIFO, not a regular file")
    assert_one_line_error(run_cli("info", "/dev/zero"), "a device, not a regular file")
    styled = run_cli("generate", "a cat", "--model", model, "--styles", str(fifo), "--style", "x", "--out", out)
    assert_one_line_error(styled, "not a regular file")
    source = tmp_path / "diffusers"
    source.mkdir()
    os.mkfifo(source / "model_index.json")
    exported = run_cli("export", str(source), "--out", str(tmp_path / "e"))  # says "loading SOURCE" first
    assert exported.returncode != 0 and "Traceback" not in exported.stderr, exported.stderr
    assert exported.stderr.splitlines()[-1].startswith("error: ") and "model_index.json is a FIFO" in exported.stderr


def test_a_fifo_in_place_of_a_model_file_is_named(tmp_path):
    from sdrt.runtime.manifest import Manifest
    from sdrt.runtime.model_folder import infer_manifest

    os.mkfifo(tmp_path / "manifest.json")
    assert "manifest.json is a FIFO" in refused(ModelFolderError, Manifest.load, tmp_path)
    os.unlink(tmp_path / "manifest.json")
    os.mkfifo(tmp_path / "model_index.json")
    assert "model_index.json is a FIFO" in refused(ModelFolderError, infer_manifest, tmp_path, None)


def test_the_server_lists_a_folder_of_hostile_loras_and_refuses_each_with_a_4xx(exported_tiny, tmp_path):
    from fastapi.testclient import TestClient

    from sdrt.runtime.pipeline import Pipeline
    from sdrt.serve.app import create_app

    folder = tmp_path / "loras"
    hostile = hostile_loras(folder)
    pipeline = Pipeline.load(exported_tiny("standard"), lora_dir=folder)
    with TestClient(create_app(pipeline)) as client:
        listing = client.get("/sdapi/v1/loras")
        assert listing.status_code == 200 and {entry["name"] for entry in listing.json()} == set(hostile)
        for name, (_, key) in hostile.items():
            body = {"prompt": f"a cat <lora:{name}:1>", "steps": 1, "width": 64, "height": 64}
            response = client.post("/sdapi/v1/txt2img", json=body)
            assert response.status_code == 400, response.text
            assert name in response.text and key in response.text and str(tmp_path) not in response.text
