"""Containment (issue 38): every LoRA and ControlNet name a client sends resolves inside the
server's folder (--lora-dir, --controlnet-dir) or is refused with the name as sent and no path
of the server's disk; the CLI (a local user) still names files by path. LoRA weights that can
never give an image are refused naming the field, and a NaN from the denoiser says so."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from sdrt.errors import GenerationError, SdrtError
from sdrt.runtime.features.controlnet.library import ControlNetLibrary
from sdrt.runtime.features.controlnet.manifest import KIND
from sdrt.runtime.features.lora.library import LoraLibrary
from sdrt.runtime.features.lora.tags import MAX_LORA_WEIGHT
from sdrt.runtime.files.confined import inside
from sdrt.runtime.manifest import MANIFEST_NAME, Manifest
from sdrt.runtime.pipeline import Pipeline
from sdrt.runtime.request import GenerationRequest


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A server's working directory holding a LoRA file and a folder outside its LoRA and
    ControlNet folders, a symlink in each folder leading out, and one LoRA inside."""
    tmp_path = tmp_path_factory.mktemp("containment")
    work, loras, controlnets = tmp_path / "work", tmp_path / "loras", tmp_path / "controlnets"
    for folder in (work, loras, controlnets, work / "outside"):
        folder.mkdir()
    (work / "secret.safetensors").write_bytes(b"not yours")
    (loras / "mine.safetensors").write_bytes(b"broken on purpose")
    (loras / "escape.safetensors").symlink_to(work / "secret.safetensors")
    (work / "outside" / MANIFEST_NAME).write_text(json.dumps({"kind": KIND}))
    (controlnets / "escape").symlink_to(work / "outside")
    (controlnets / "broken").mkdir()
    (controlnets / "broken" / MANIFEST_NAME).write_text(json.dumps({"kind": KIND}))
    return tmp_path


@pytest.fixture
def layout(folders, monkeypatch):
    """`folders`, run from its working directory (where a server was started)."""
    monkeypatch.chdir(folders / "work")
    return folders


@pytest.fixture(scope="module")
def pipeline(exported_tiny, folders):
    return Pipeline.load(exported_tiny("standard"), lora_dir=folders / "loras", controlnet_dir=folders / "controlnets")


HOSTILE_NAMES = [
    "secret.safetensors",  # a file of the working directory
    "../work/secret.safetensors",
    "escape",  # a symlink in the folder leading out
    "/etc/passwd",
    "a\0b",
    "..",
    "",
    "sub\\..\\secret",
]


def _no_paths(message: str, root) -> None:
    assert str(root) not in message and os.path.realpath(root) not in message, message


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_client_lora_name_resolves_in_the_lora_folder_only(layout, name):
    library = LoraLibrary(layout / "loras")
    with pytest.raises(GenerationError) as raised:
        library.read(name, confined=True)
    message = str(raised.value)
    assert "unknown LoRA" in message and "\n" not in message
    _no_paths(message, layout)


def test_a_lora_of_the_folder_is_found_and_its_errors_show_no_path(layout):
    library = LoraLibrary(layout / "loras")
    assert library.path_of("mine", confined=True) == layout / "loras" / "mine.safetensors"
    assert "escape" not in library.names(confined=True) and "escape" in library.names()
    with pytest.raises(GenerationError) as raised:
        library.read("mine", confined=True)  # found, but not a LoRA: the error names it as sent
    assert "'mine'" in str(raised.value)
    _no_paths(str(raised.value), layout)


def test_the_cli_still_names_lora_files_by_path(layout):
    """A local user's paths are theirs (the documented --lora PATH and <lora:PATH> in the CLI)."""
    library = LoraLibrary(layout / "loras")
    assert library.path_of("secret.safetensors").resolve() == layout / "work" / "secret.safetensors"
    assert LoraLibrary().path_of(str(layout / "loras" / "mine.safetensors")).name == "mine.safetensors"


@pytest.mark.parametrize("name", [*HOSTILE_NAMES, "outside"])
def test_a_client_controlnet_name_resolves_in_the_controlnet_folder_only(layout, name):
    library = ControlNetLibrary(None, "model", lambda path, manifest: None, layout / "controlnets")
    with pytest.raises(GenerationError) as raised:
        library.get(name, confined=True)
    assert "unknown ControlNet" in str(raised.value) and raised.value.param is not None
    _no_paths(str(raised.value), layout)
    assert set(library.names(confined=True)) == {"broken"}


def test_a_broken_controlnet_of_the_folder_is_named_without_paths(layout, exported_tiny):
    manifest = Manifest.load(exported_tiny("standard"))
    library = ControlNetLibrary(manifest, "model", lambda path, spec: None, layout / "controlnets")
    with pytest.raises(GenerationError) as raised:
        library.get("broken", confined=True)
    assert "'broken'" in str(raised.value)
    _no_paths(str(raised.value), layout)
    with pytest.raises(GenerationError) as local:  # the CLI's error keeps the path: the user's own
        library.get(str(layout / "controlnets" / "broken"))
    assert str(layout) in str(local.value)


def test_inside_resolves_symlinks(layout):
    assert inside(layout / "loras" / "mine.safetensors", layout / "loras")
    assert not inside(layout / "loras" / "escape.safetensors", layout / "loras")
    assert not inside(layout / "loras" / ".." / "work", layout / "loras")


@pytest.fixture
def served(pipeline, layout):
    from fastapi.testclient import TestClient

    from sdrt.serve.app import create_app

    with TestClient(create_app(pipeline)) as client:
        yield client, pipeline


BODY = {"prompt": "a cat", "steps": 1, "seed": 1, "width": 64, "height": 64}


def test_the_server_refuses_names_outside_its_folders_without_paths(served, layout, tiny_image_b64):
    client, pipeline = served
    answer = client.post("/sdapi/v1/txt2img", json={**BODY, "prompt": "a cat <lora:secret.safetensors>"})
    assert answer.status_code == 400 and "unknown LoRA 'secret.safetensors'" in answer.text, answer.text
    _no_paths(answer.text, layout)
    unit = {"image": tiny_image_b64, "module": "none", "model": "outside", "weight": 0.5}
    answer = client.post("/sdapi/v1/txt2img", json={**BODY, "alwayson_scripts": {"controlnet": {"args": [unit]}}})
    assert answer.status_code == 400 and "unknown ControlNet 'outside'" in answer.text, answer.text
    assert json.loads(answer.text)["error"]["param"] is not None
    _no_paths(answer.text, layout)
    # the same pipeline used locally (the CLI's way) still takes the path
    with pytest.raises(SdrtError, match="secret.safetensors"):
        pipeline.generate("a cat <lora:secret.safetensors>", steps=1, seed=1)


@pytest.fixture
def tiny_image_b64():
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# ---------------------------------------------------------------- weights


@pytest.mark.parametrize(
    "prompt, negative, param",
    [
        ("a cat <lora:mine:1e30>", None, "prompt"),
        ("a (cat:5000)", None, "prompt"),
        ("a cat", "(((ugly:40):40))", "negative_prompt"),
    ],
)
def test_weights_that_cannot_give_an_image_name_their_field(pipeline, prompt, negative, param):
    with pytest.raises(GenerationError) as raised:
        pipeline.generate(prompt, negative_prompt=negative, steps=1, seed=1)
    assert raised.value.param == param and "NaN" not in str(raised.value), str(raised.value)


def test_lora_weights_given_in_code_are_bounded(exported_tiny):
    from sdrt.runtime.features.lora.merge import LoraWeights
    from sdrt.runtime.features.lora.tags import LoraRef

    manifest = Manifest.load(exported_tiny("standard"))
    for weight in (float("nan"), float("inf"), MAX_LORA_WEIGHT * 2):
        request = GenerationRequest("a cat", loras=[LoraRef("mine", LoraWeights(weight, 1.0))])
        with pytest.raises(GenerationError) as raised:
            request.resolve(manifest)
        assert raised.value.param == "loras"


def test_nan_from_the_denoiser_names_the_denoiser(pipeline, monkeypatch):
    from sdrt.runtime.engines.base import Engine

    real = pipeline.engines["unet"]

    class NanUnet(Engine):
        def _run(self, feeds, dims):
            out = real.run(feeds)
            return {name: np.full_like(value, np.nan) for name, value in out.items()}

    monkeypatch.setitem(pipeline.engines, "unet", NanUnet("unet", real.spec, real.dims))
    with pytest.raises(GenerationError, match="the denoiser produced NaN or infinite latents"):
        pipeline.generate("a cat", steps=1, seed=0)
