"""Malformed model files (issue 21, class 2): every malformed file in a model folder is one clear
error in every command, never a traceback or a hang. Cases come from generators: each top-level
manifest field, each dims and tensor field, and each scheduler and tokenizer file, replaced by
values of every wrong JSON type."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from sdrt.cli import main
from sdrt.errors import ModelFolderError, SdrtError
from sdrt.runtime.manifest import Manifest
from sdrt.runtime.pipeline import Pipeline
from sdrt.runtime.text.tokenizer import ClipTokenizer
from support.hostile import assert_one_line_error, copy_model

WRONG_VALUES = [None, "text", -1, 0, 2**70, 1.5, True, [], {}, [1, 2], {"a": 1}]
WHOLE_FILES = {
    "list": b"[]",
    "null": b"null",
    "string": b'"manifest"',
    "number": b"42",
    "empty": b"",
    "binary": bytes(range(256)) * 4,
    "deep": b"[" * 100_000 + b"]" * 100_000,
    "nan": b'{"format_version": NaN}',
    "truncated": b'{"format_version": 1, "dims": {',
    "utf16": '{"format_version": 1}'.encode("utf-16"),
}


@pytest.fixture(scope="module")
def model(exported_tiny, tmp_path_factory) -> Path:
    return copy_model(exported_tiny("standard"), tmp_path_factory.mktemp("model-files") / "model")


@pytest.fixture(scope="module")
def manifest_data(model) -> dict:
    return json.loads((model / "manifest.json").read_text())


def _load_with(folder: Path, data: bytes) -> None:
    (folder / "manifest.json").write_bytes(data)
    Manifest.load(folder)


def _cases(data: dict):
    """(label, edit) pairs: each field of the manifest, its dims and its first tensor, set to
    each wrong value; each field removed."""
    for key in data:
        for value in WRONG_VALUES:
            yield f"{key}={value!r}"[:60], (lambda d, k=key, v=value: d.__setitem__(k, v))
        yield f"no {key}", (lambda d, k=key: d.pop(k))
    for dim, field in itertools.product(("height", "batch"), ("min", "opt", "max", "multiple")):
        for value in (0, -8, "8", None, 2**40):
            yield f"dims.{dim}.{field}={value!r}", (lambda d, a=dim, f=field, v=value: d["dims"][a].__setitem__(f, v))
    yield "dims.height max<min", lambda d: d["dims"]["height"].update(min=64, max=16)
    for field in ("name", "dtype", "shape"):
        for value in (None, 3, "x", [], {"a": 1}, [0, 4], [-1], [1.5], ["undefined_dim"]):
            yield (
                f"unet.inputs[0].{field}={value!r}",
                (lambda d, f=field, v=value: d["components"]["unet"]["inputs"][0].__setitem__(f, v)),
            )
    for field in ("file", "sha256", "precision", "inputs", "data_files"):
        for value in (None, 3, [], "zz"):
            yield f"unet.{field}={value!r}", (lambda d, f=field, v=value: d["components"]["unet"].__setitem__(f, v))


# Edits that leave a manifest valid as a document: other numbers, free-form source and
# versions; no sdxl, flux, sd3 or flux2 section (an SD 1.x model's are null); no token table sizes (no embeddings
# then); and three that only the files can refute (checked at load, below).
EXPECTED_VALID = [
    "vae_scaling_factor=1180591620717411303424",
    "vae_scaling_factor=1.5",
    "vae_shift_factor=-1",
    "vae_shift_factor=0",
    "vae_shift_factor=1180591620717411303424",
    "vae_shift_factor=1.5",
    "source={}",
    "source={'a': 1}",
    "versions={}",
    "sdxl=None",
    "no sdxl",
    "token_table_rows={}",
    "no token_table_rows",
    "tiny_vae=None",
    "no tiny_vae",
    "flux=None",
    "no flux",
    "sd3=None",
    "no sd3",
    "flux2=None",
    "no flux2",
    "unet.inputs[0].name='x'",
    "unet.file='zz'",
    "unet.inputs=[]",
]
REFUTED_AT_LOAD = {
    "unet.inputs[0].name='x'": "the unet graph's inputs",
    "unet.file='zz'": "is missing",
    "unet.inputs=[]": "the unet graph's inputs",
}


def test_whole_file_garbage_is_one_clear_error(model, tmp_path):
    folder = copy_model(model, tmp_path / "m")
    for label, data in WHOLE_FILES.items():
        with pytest.raises(ModelFolderError) as caught:
            _load_with(folder, data)
        assert "manifest.json" in str(caught.value) and "\n" not in str(caught.value), label


def test_every_field_of_the_wrong_type_is_one_clear_error(model, manifest_data, tmp_path):
    folder = copy_model(model, tmp_path / "m")
    cases = list(_cases(manifest_data))
    assert len(cases) > 250
    accepted = []
    for label, edit in cases:
        data = json.loads(json.dumps(manifest_data))
        edit(data)
        try:
            _load_with(folder, json.dumps(data).encode())
        except ModelFolderError as error:
            message = str(error)
            assert "\n" not in message and len(message) < 500, (label, message)
            continue
        accepted.append(label)
    assert accepted == EXPECTED_VALID, accepted


@pytest.mark.parametrize("label", REFUTED_AT_LOAD)
def test_valid_looking_manifests_that_the_files_refute_fail_at_load(model, manifest_data, tmp_path, label):
    folder = copy_model(model, tmp_path / "m")
    data = json.loads(json.dumps(manifest_data))
    dict(_cases(manifest_data))[label](data)
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelFolderError, match=REFUTED_AT_LOAD[label]):
        Pipeline.load(folder)


@pytest.mark.parametrize("command", ["generate", "tokenize", "build", "bench", "serve"])
@pytest.mark.parametrize("garbage", ["list", "binary", "deep"])
def test_every_command_reports_a_malformed_manifest_in_one_line(model, tmp_path, command, garbage):
    folder = copy_model(model, tmp_path / "m")
    (folder / "manifest.json").write_bytes(WHOLE_FILES[garbage])
    arguments = {
        "generate": ["generate", "x", "--model", str(folder), "--out", str(tmp_path / "x.png")],
        "tokenize": ["tokenize", "x", "--model", str(folder)],
        "build": ["build", str(folder)],
        "bench": ["bench", "--model", str(folder), "--runs", "1", "--warmup", "0"],
        "serve": ["serve", "--model", str(folder), "--port", "0"],
    }[command]
    assert_one_line_error(CliRunner().invoke(main, arguments), "manifest.json")


# The fields the default sampler (LMS) reads: checked at load.
SCHEDULER_FIELDS = [
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "prediction_type",
    "timestep_spacing",
    "steps_offset",
    "trained_betas",
    "use_karras_sigmas",
]
SCHEDULER_VALUES = ["text", [], {}, 10**12, -5, True, 1e308 * 10, [["nested"]], 2**70]


def test_scheduler_configs_of_the_wrong_type_fail_at_load(model, tmp_path):
    folder = copy_model(model, tmp_path / "m")
    path = folder / "scheduler" / "scheduler_config.json"
    original = json.loads(path.read_text())
    failures = 0
    for field, value in itertools.product(SCHEDULER_FIELDS, SCHEDULER_VALUES):
        path.write_text(json.dumps({**original, field: value}))
        try:
            Pipeline.load(folder)
        except SdrtError as error:
            assert "\n" not in str(error), (field, value, error)
            failures += 1
            continue
        # Accepted: only a value of the right type and range (e.g. a bool for a bool field).
        assert (field, value) in {("use_karras_sigmas", True)}, (field, value)
    assert failures == len(SCHEDULER_FIELDS) * len(SCHEDULER_VALUES) - 1
    # A field only another sampler reads: refused when that sampler is asked for.
    path.write_text(json.dumps({**original, "interpolation_type": "text"}))
    pipeline = Pipeline.load(folder)
    with pytest.raises(SdrtError, match="interpolation_type 'text' is not supported"):
        pipeline.generate("x", steps=1, sampler="euler")
    for data in (b"[]", b"null", b"\xff\xfe", b"{"):
        path.write_bytes(data)
        with pytest.raises(ModelFolderError, match="scheduler_config.json"):
            Pipeline.load(folder)


TOKENIZER_FILES = ["tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"]
TOKENIZER_GARBAGE = [
    b"[]",
    b"null",
    b"7",
    b'"x"',
    b"\xff" * 10,
    b"[" * 50_000,
    b'{"eos_token": {"content": 7}}',
    b'{"model_max_length": "77"}',
    b'{"bos_token": 5}',
]


@pytest.mark.parametrize("name", TOKENIZER_FILES)
def test_tokenizer_files_of_the_wrong_type_are_one_clear_error(model, tmp_path, name):
    folder = copy_model(model, tmp_path / "m")
    path = folder / "tokenizer" / name
    for garbage in TOKENIZER_GARBAGE:
        path.write_bytes(garbage)
        with pytest.raises(ModelFolderError) as caught:
            ClipTokenizer.from_folder(folder)
        assert "\n" not in str(caught.value)
    if name == "tokenizer.json":
        model = {"type": "BPE", "end_of_word_suffix": "</w>"}
        for broken in (
            {"vocab": [], "merges": []},
            {"vocab": {"a": "1"}, "merges": []},
            {"vocab": {"a": 1}, "merges": ["a b c"]},
            {"vocab": {"a": 1}, "merges": 5},
        ):
            path.write_text(json.dumps({"model": {**model, **broken}}))
            with pytest.raises(ModelFolderError, match="tokenizer.json"):
                ClipTokenizer.from_folder(folder)
    result = CliRunner().invoke(main, ["tokenize", "a cat", "--model", str(folder)])
    assert_one_line_error(result)


def test_a_malformed_merges_file_is_one_clear_error(model, tmp_path):
    folder = copy_model(model, tmp_path / "m")
    tokenizer_json = folder / "tokenizer" / "tokenizer.json"  # the same tokenizer as vocab.json + merges.txt
    (folder / "tokenizer" / "vocab.json").write_text(
        json.dumps(json.loads(tokenizer_json.read_text())["model"]["vocab"])
    )
    tokenizer_json.unlink()
    path = folder / "tokenizer" / "merges.txt"
    for garbage in (b"a b c\n", b"\xff\xfe\n", b"single\n"):
        path.write_bytes(b"#version: 0.2\n" + garbage)
        with pytest.raises(ModelFolderError, match="merges.txt"):
            ClipTokenizer.from_folder(folder)
