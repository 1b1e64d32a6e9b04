"""Textual-inversion embeddings against diffusers' load_textual_inversion, in every file format
A1111 and diffusers write, on SD 1.x and SDXL; safe reading of torch files; bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import save_file

from conftest import diffusers_pipeline, reference_scheduler, sdxl_reference
from sdrt.cli import main
from sdrt.errors import SdrtError
from sdrt.runtime.files.torch_files import TorchFileError, load_torch_file
from sdrt.runtime.imaging.png_info import PARAMETERS_KEY
from sdrt.runtime.pipeline import Pipeline

MAX_PIXEL_ERROR = 2 / 255
MEAN_PIXEL_ERROR = 0.5 / 255
GUIDANCE = 40.0  # amplifies the text's effect on the tiny random models (see test_prompts.py)
SAMPLER = "euler"
TOKEN = "sdrtcat"
PROMPT = f"a photo of {TOKEN} on grass"
NO_HEAVY_IMPORTS = Path(__file__).parent.parent / "no_heavy_imports.py"


def assert_same_image(got: np.ndarray, expected: np.ndarray) -> None:
    difference = np.abs(got - expected)
    assert difference.max() <= MAX_PIXEL_ERROR, f"max {difference.max() * 255:.3f}/255"
    assert difference.mean() <= MEAN_PIXEL_ERROR, f"mean {difference.mean() * 255:.3f}/255"


def vectors(count: int, width: int, seed: int) -> torch.Tensor:
    """Random vectors on the scale of a trained token table (a few times the tiny table's)."""
    return torch.randn(count, width, generator=torch.Generator().manual_seed(seed)) * 0.5


def write(kind: str, folder: Path, count: int, width: int = 32, seed: int = 0) -> Path:
    """An embedding file in one of the formats people share."""
    data = vectors(count, width, seed)
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "a1111_safetensors":
        path = folder / f"{TOKEN}.safetensors"
        save_file({"emb_params": data}, path)
    elif kind == "a1111_pt":
        path = folder / f"{TOKEN}.pt"
        torch.save(
            {
                "string_to_token": {"*": 265},
                "string_to_param": {"*": data.requires_grad_()},
                "name": TOKEN,
                "step": 500,
                "sd_checkpoint": "abc",
                "sd_checkpoint_name": "model",
            },
            path,
        )
    elif kind == "diffusers_bin":
        path = folder / "learned_embeds.bin"
        torch.save({TOKEN: data[0] if count == 1 else data}, path)
    else:  # diffusers_safetensors
        path = folder / "learned_embeds.safetensors"
        save_file({TOKEN: data}, path)
    return path


@pytest.fixture(scope="module")
def folder(exported_tiny) -> Path:
    return exported_tiny("standard")


def reference_with(tiny_models, path: Path):
    pipeline = diffusers_pipeline("StableDiffusionPipeline", tiny_models["standard"])
    pipeline.scheduler = reference_scheduler(SAMPLER, dict(pipeline.scheduler.config))
    pipeline.load_textual_inversion(str(path), token=TOKEN)
    return pipeline


def reference_image(pipeline, prompt: str, seed: int = 4, **settings) -> np.ndarray:
    generator = torch.Generator("cpu").manual_seed(seed)
    return pipeline(
        prompt, num_inference_steps=3, guidance_scale=GUIDANCE, generator=generator, output_type="np", **settings
    ).images


@pytest.mark.parametrize(
    "kind, count", [("a1111_safetensors", 2), ("a1111_pt", 3), ("diffusers_bin", 1), ("diffusers_safetensors", 2)]
)
def test_sd_embedding_equals_diffusers_load_textual_inversion(folder, tiny_models, tmp_path, kind, count):
    path = write(kind, tmp_path, count)
    reference = reference_with(tiny_models, path)
    expected = reference_image(reference, PROMPT)
    ours = Pipeline.load(folder, embeddings=[f"{path}:{TOKEN}"])
    got = ours.generate(PROMPT, steps=3, seed=4, guidance_scale=GUIDANCE, sampler=SAMPLER)
    assert_same_image(got.array, expected)
    plain = Pipeline.load(folder).generate(PROMPT, steps=3, seed=4, guidance_scale=GUIDANCE, sampler=SAMPLER)
    assert np.abs(plain.array - got.array).max() > 2 * MAX_PIXEL_ERROR, "the embedding must show"
    assert got.parameters["ti_hashes"] == {TOKEN: ours.text_encoders.embeddings.loaded[0].short_hash}


def test_sdxl_embedding_equals_diffusers_with_one_file_per_encoder(exported_sdxl, tiny_sdxl, tmp_path):
    clip_l, clip_g = vectors(2, 32, 1), vectors(2, 48, 2)
    path = tmp_path / f"{TOKEN}.safetensors"
    save_file({"clip_l": clip_l, "clip_g": clip_g}, path)
    reference = sdxl_reference("StableDiffusionXLPipeline", tiny_sdxl["base"])
    reference.scheduler = reference_scheduler(SAMPLER, dict(reference.scheduler.config))
    reference.load_textual_inversion(
        clip_g, token=TOKEN, text_encoder=reference.text_encoder_2, tokenizer=reference.tokenizer_2
    )
    reference.load_textual_inversion(
        clip_l, token=TOKEN, text_encoder=reference.text_encoder, tokenizer=reference.tokenizer
    )
    expected = reference_image(reference, PROMPT, seed=2)
    ours = Pipeline.load(exported_sdxl("base"), embeddings=[tmp_path])
    got = ours.generate(PROMPT, steps=3, seed=2, guidance_scale=GUIDANCE, sampler=SAMPLER)
    assert_same_image(got.array, expected)
    # An SD 1.x embedding (one 32-wide set) does not fit SDXL: in a folder it is skipped, named alone an error.
    sd = write("a1111_safetensors", tmp_path / "sd", 1)
    skipped = Pipeline.load(exported_sdxl("base"), embeddings=[tmp_path / "sd"]).text_encoders.embeddings
    assert skipped.loaded == [] and "32 wide; this model's text_encoder_2 takes 48" in skipped.skipped[TOKEN]
    with pytest.raises(SdrtError, match="its vectors are 32 wide; this model's text_encoder_2 takes 48"):
        Pipeline.load(exported_sdxl("base"), embeddings=[sd])


def test_a_folder_lists_loaded_and_skipped_embeddings_over_the_a1111_api(folder, tmp_path):
    from fastapi.testclient import TestClient

    from sdrt.serve.app import ServeSettings, create_app

    library = tmp_path / "embeddings"
    write("a1111_safetensors", library, 2)
    save_file({"emb_params": vectors(1, 64, 3)}, library / "wide.safetensors")  # made for another model
    (library / "notes.txt").write_text("not an embedding")
    pipeline = Pipeline.load(folder, embeddings=[library])
    with TestClient(create_app(pipeline, ServeSettings(randn_source="CPU"))) as client:
        listing = client.get("/sdapi/v1/embeddings").json()
        assert listing["loaded"] == {
            TOKEN: {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": 32, "vectors": 2}
        }
        assert "vectors are 64 wide; this model's text_encoder takes 32" in listing["skipped"]["wide"]["reason"]
        body = {"prompt": f"({TOKEN}:1.2), grass", "steps": 2, "seed": 3, "width": 64, "height": 64}
        response = client.post("/sdapi/v1/txt2img", json=body)
        assert response.status_code == 200, response.text
        info = json.loads(response.json()["info"])
        assert f'TI hashes: "{TOKEN}: ' in info["infotexts"][0]
    direct = pipeline.generate(f"({TOKEN}:1.2), grass", steps=2, seed=3, guidance_scale=7.0, sampler="k_euler")
    assert np.array_equal(
        np.asarray(Image.open(__import__("io").BytesIO(__import__("base64").b64decode(response.json()["images"][0])))),
        np.asarray(direct.images[0]),
    )


def test_cli_embedding_png_record_and_unknown_trigger(folder, tmp_path):
    path = write("a1111_pt", tmp_path, 2)
    out = tmp_path / "out.png"
    result = CliRunner().invoke(
        main,
        [
            "generate",
            PROMPT,
            "--model",
            str(folder),
            "--embedding",
            str(path),
            "--steps",
            "2",
            "--seed",
            "1",
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert f'TI hashes: "{TOKEN}: ' in Image.open(out).text[PARAMETERS_KEY]
    shown = CliRunner().invoke(
        main, ["tokenize", f"{TOKEN} and sdrtdog", "--model", str(folder), "--embedding", str(path), "--json"]
    )
    (row,) = json.loads(shown.output)
    assert row["embeddings"] == [TOKEN]
    tokens = row["chunks"][0]["tokens"]
    assert tokens[1:3] == [f"<{TOKEN}#0>", f"<{TOKEN}#1>"]  # the trigger's two vectors
    assert "<sdrtdog" not in " ".join(tokens) and "dog" in " ".join(tokens)  # no such embedding: plain text
    wide = tmp_path / "wide.safetensors"
    save_file({"emb_params": vectors(1, 64, 3)}, wide)
    result = CliRunner().invoke(main, ["generate", "x", "--model", str(folder), "--embedding", str(wide)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1] == (
        f"error: {wide}: its vectors are 64 wide; this model's text_encoder takes 32 (an embedding for another "
        "model family)"
    )


def test_torch_files_give_tensors_and_nothing_else(tmp_path):
    path = write("a1111_pt", tmp_path, 2)
    data = load_torch_file(path)
    np.testing.assert_array_equal(data["string_to_param"]["*"], vectors(2, 32, 0).numpy())
    parameter_dict = tmp_path / "old.pt"  # the original textual-inversion tool pickled a ParameterDict
    torch.save(
        {"string_to_param": torch.nn.ParameterDict({"*": torch.nn.Parameter(vectors(1, 32, 5))})}, parameter_dict
    )
    np.testing.assert_array_equal(load_torch_file(parameter_dict)["string_to_param"]["*"], vectors(1, 32, 5).numpy())
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    torch.save({"string_to_param": {"*": Payload()}}, evil)
    with pytest.raises(TorchFileError, match="refers to posix.system, which is not tensor data"):
        load_torch_file(evil)
    assert not marker.exists()
    legacy = tmp_path / "legacy.pt"
    torch.save({"a": torch.zeros(1)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(TorchFileError, match="legacy pickle, which sdrt does not read"):
        load_torch_file(legacy)


def test_tensorrt_and_no_torch_runs_equal_the_cpu(folder, tmp_path, monkeypatch):
    import shutil

    import fake_tensorrt

    path = write("a1111_pt", tmp_path / "emb", 2)
    model = tmp_path / "model"
    shutil.copytree(folder, model)
    expected = Pipeline.load(model, embeddings=[path]).generate(PROMPT, steps=2, seed=1).array
    fake_tensorrt.install(monkeypatch)
    built = CliRunner().invoke(main, ["build", str(model), "--static", "64x64", "--max-batch", "1"])
    assert built.exit_code == 0, built.output
    trt = Pipeline.load(model, backend="tensorrt", embeddings=[path]).generate(PROMPT, steps=2, seed=1)
    np.testing.assert_allclose(trt.array, expected, atol=1e-5)
    np.save(tmp_path / "expected.npy", expected)
    code = (
        "import numpy as np\nfrom sdrt.runtime.pipeline import Pipeline\n"
        f"got = Pipeline.load({str(folder)!r}, embeddings=[{str(path)!r}]).generate({PROMPT!r}, steps=2, seed=1)\n"
        f"np.testing.assert_array_equal(got.array, np.load({str(tmp_path / 'expected.npy')!r}))\n"
    )
    completed = subprocess.run([sys.executable, str(NO_HEAVY_IMPORTS), code], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
