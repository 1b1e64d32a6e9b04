"""LoRA without re-export, against diffusers' load_lora_weights + fuse_lora / set_adapters on
tiny random models, with LoRA files this test writes from the models' own module names
(tests/support/lora_files.py): kohya SD 1.x, LoCon, diffusers/PEFT, kohya SDXL (LDM names)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import fake_tensorrt
from conftest import diffusers_pipeline, reference_scheduler, sdxl_reference
from sdrt.cli import main
from sdrt.runtime.features.lora.files import read_lora
from sdrt.runtime.features.lora.merge import LoraWeights, merged_tensors, resolve
from sdrt.runtime.features.lora.weights_map import WeightsMap
from sdrt.runtime.manifest import Manifest
from sdrt.runtime.pipeline import Pipeline
from support.images import MAX_PIXEL_ERROR, assert_same_image
from support.lora_files import kohya_lora, peft_lora

SAMPLER = "euler"
SETTINGS = dict(steps=4, seed=7, height=64, width=64, sampler=SAMPLER, guidance_scale=7.5)
PROMPT = "a photo of a cat"
NO_HEAVY_IMPORTS = Path(__file__).parent.parent / "no_heavy_imports.py"


@pytest.fixture(scope="module")
def source(tiny_models):
    return tiny_models["standard"]


@pytest.fixture(scope="module")
def exported(exported_tiny):
    return exported_tiny("standard")


@pytest.fixture(scope="module")
def loras(source, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("loras")
    reference = diffusers_pipeline("StableDiffusionPipeline", source)
    return {
        "kohya": kohya_lora(reference, folder / "kohya.safetensors", seed=1),
        "locon": kohya_lora(reference, folder / "locon.safetensors", seed=2, conv=True),
        "peft": peft_lora(reference, folder / "peft.safetensors", seed=3),
        "other": kohya_lora(reference, folder / "other.safetensors", seed=4),
    }


@pytest.fixture(scope="module")
def pipeline(exported, loras):
    return Pipeline.load(exported, lora_dir=loras["kohya"].parent)


def reference_image(source: Path, adapters: list[tuple[Path, float]]) -> np.ndarray:
    reference = diffusers_pipeline("StableDiffusionPipeline", source)
    reference.scheduler = reference_scheduler(SAMPLER, reference.scheduler.config)
    if len(adapters) == 1:
        reference.load_lora_weights(str(adapters[0][0]))
        reference.fuse_lora(lora_scale=adapters[0][1])
    else:
        names = [f"adapter{index}" for index in range(len(adapters))]
        for name, (path, _) in zip(names, adapters):
            reference.load_lora_weights(str(path), adapter_name=name)
        reference.set_adapters(names, [weight for _, weight in adapters])
    settings = {k: v for k, v in SETTINGS.items() if k not in ("steps", "seed", "sampler", "guidance_scale")}
    return reference(
        PROMPT,
        num_inference_steps=SETTINGS["steps"],
        guidance_scale=SETTINGS["guidance_scale"],
        generator=torch.Generator().manual_seed(SETTINGS["seed"]),
        output_type="np",
        **settings,
    ).images


# ---------------------------------------------------------------- the export's map
def test_the_weights_map_holds_every_layer_in_its_graph_layout(exported, source):
    """Each mapped initializer, read from the ONNX file with onnx, equals the layer's weight
    in the recorded layout; every Linear and Conv2d of the UNet and text encoder is mapped."""
    import onnx
    from onnx import numpy_helper

    reference = diffusers_pipeline("StableDiffusionPipeline", source)
    manifest = Manifest.load(exported)
    for component, model in (("unet", reference.unet), ("text_encoder", reference.text_encoder)):
        spec = manifest.components[component]
        assert spec.weights_map in spec.data_files
        graph = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(exported / spec.file)).graph.initializer}
        weights = WeightsMap.load(exported, component, spec).weights
        layers = {
            name.removeprefix("text_model."): module
            for name, module in model.named_modules()
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))
        }
        assert set(weights) == set(layers)
        for name, mapped in weights.items():
            expected = mapped.to_graph(layers[name].weight.detach().numpy())
            np.testing.assert_array_equal(graph[mapped.initializer], expected)


# ---------------------------------------------------------------- images against diffusers
@pytest.mark.parametrize("kind, weight", [("kohya", 0.7), ("locon", 1.0), ("peft", 0.5)])
def test_a_lora_equals_diffusers_load_and_fuse(pipeline, source, loras, kind, weight):
    result = pipeline.generate(PROMPT, loras=[f"{loras[kind]}:{weight}"], **SETTINGS)
    assert result.warnings == []
    assert_same_image(result.array, reference_image(source, [(loras[kind], weight)]))
    base = pipeline.generate(PROMPT, **SETTINGS).array
    assert np.abs(result.array - base).max() > 10 * MAX_PIXEL_ERROR  # the LoRA changed the image


def test_two_loras_equal_diffusers_set_adapters_and_tags_equal_paths(pipeline, source, loras):
    tagged = pipeline.generate(f"{PROMPT} <lora:kohya:0.6> <lora:other:0.4>", **SETTINGS)
    named = pipeline.generate(PROMPT, loras=[f"{loras['kohya']}:0.6", f"{loras['other']}:0.4"], **SETTINGS)
    np.testing.assert_array_equal(tagged.array, named.array)  # the tags left the encoded prompt
    assert_same_image(tagged.array, reference_image(source, [(loras["kohya"], 0.6), (loras["other"], 0.4)]))
    # A1111's record: the prompt as given, and the hash of each file's tensor data.
    data = loras["kohya"].read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    assert tagged.parameters["lora_hashes"]["kohya"] == hashlib.sha256(data[header:]).hexdigest()[:12]
    assert tagged.parameters["prompt"].endswith("<lora:other:0.4>")


def test_weight_zero_is_the_base_and_switching_back_reuses_the_session(exported, loras):
    pipeline = Pipeline.load(exported)
    base = pipeline.generate(PROMPT, **SETTINGS).array
    zero = pipeline.generate(PROMPT, loras=[f"{loras['kohya']}:0"], **SETTINGS).array
    np.testing.assert_array_equal(zero, base)
    first = pipeline.generate(PROMPT, loras=[f"{loras['kohya']}:0.8"], **SETTINGS).array
    pipeline.generate(PROMPT, loras=[f"{loras['other']}:0.8"], **SETTINGS)
    again = pipeline.generate(PROMPT, loras=[f"{loras['kohya']}:0.8"], **SETTINGS).array
    np.testing.assert_array_equal(again, first)
    unet = pipeline.loras.variants("unet")
    assert unet.builds == 2 and unet.cached == 2  # A, B built once each; A again was free
    np.testing.assert_array_equal(pipeline.generate(PROMPT, **SETTINGS).array, base)


def test_sessions_from_the_cached_graph_equal_sessions_optimized_with_the_weights(exported, loras, monkeypatch):
    """The fast path places merged weights (convolutions in ONNX Runtime's blocked layout) in the
    per-machine optimized graph; the slow path optimizes the export with them: same image."""
    settings = dict(SETTINGS, prompt=PROMPT, loras=[f"{loras['locon']}:1.0"])
    fast = Pipeline.load(exported)
    got = fast.generate(**settings).array
    assert fast.loras.variants("unet").engine  # built
    unet = next(iter(fast.loras.variants("unet")._engines.values()))
    assert unet.session.sdrt_from_cache
    monkeypatch.setenv("SDRT_ORT_CACHE", "0")
    slow = Pipeline.load(exported)
    expected = slow.generate(**settings).array
    assert not next(iter(slow.loras.variants("unet")._engines.values())).session.sdrt_from_cache
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_img2img_and_inpainting_with_a_lora(pipeline, source, loras, tmp_path):
    from PIL import Image

    image = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(image)
    reference = diffusers_pipeline("StableDiffusionImg2ImgPipeline", source)
    reference.scheduler = reference_scheduler(SAMPLER, reference.scheduler.config)
    reference.load_lora_weights(str(loras["kohya"]))
    reference.fuse_lora(lora_scale=0.9)
    expected = reference(
        PROMPT,
        image=Image.open(image),
        strength=0.6,
        num_inference_steps=4,
        generator=torch.Generator().manual_seed(7),
        output_type="np",
    ).images
    got = pipeline.generate(
        PROMPT,
        loras=[f"{loras['kohya']}:0.9"],
        init_image=image,
        strength=0.6,
        **{k: v for k, v in SETTINGS.items() if k not in ("height", "width")},
    ).array
    assert_same_image(got, expected)


def test_generation_with_a_lora_needs_no_torch(exported, loras):
    code = (
        f"from sdrt.runtime.pipeline import Pipeline\n"
        f"r = Pipeline.load({str(exported)!r}).generate('a cat', loras=[{str(loras['kohya']) + ':0.5'!r}], "
        f"steps=2, seed=1, height=64, width=64)\n"
        f"assert r.parameters['lora_hashes'] and not r.warnings, r.warnings"
    )
    completed = subprocess.run([sys.executable, str(NO_HEAVY_IMPORTS), code], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr


# ---------------------------------------------------------------- SDXL
def test_a_kohya_sdxl_lora_with_ldm_names_equals_diffusers(tiny_sdxl, exported_sdxl, tmp_path):
    source, exported = tiny_sdxl["base"], exported_sdxl("base")
    reference = sdxl_reference("StableDiffusionXLPipeline", source)
    path = kohya_lora(reference, tmp_path / "xl.safetensors", seed=5, ldm_names=True)
    reference.scheduler = reference_scheduler(SAMPLER, reference.scheduler.config)
    reference.load_lora_weights(str(path))
    reference.fuse_lora(lora_scale=0.8)
    expected = reference(
        PROMPT,
        num_inference_steps=4,
        guidance_scale=7.5,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(7),
        output_type="np",
    ).images
    result = Pipeline.load(exported).generate(PROMPT, loras=[f"{path}:0.8"], **SETTINGS)
    assert result.warnings == []
    assert_same_image(result.array, expected)


# ---------------------------------------------------------------- TensorRT refit (strict fake)
def test_tensorrt_refits_from_pristine_weights(exported, loras, monkeypatch, tmp_path):
    stats = fake_tensorrt.install(monkeypatch)
    model = tmp_path / "model"
    shutil.copytree(exported, model)
    result = CliRunner().invoke(main, ["build", str(model), "--static", "64x64", "--max-batch", "1"])
    assert result.exit_code == 0, result.output
    unet_build = next(b for b in stats.builds if b["onnx"].endswith("unet/model.onnx"))
    mapped = WeightsMap.load(model, "unet", Manifest.load(model).components["unet"])
    assert set(unet_build["refittable"]) == {w.initializer for w in mapped.weights.values()}
    cpu, trt = Pipeline.load(model), Pipeline.load(model, backend="tensorrt")
    a, b = [f"{loras['kohya']}:0.7"], [f"{loras['locon']}:0.5"]
    first = trt.generate(PROMPT, loras=a, **SETTINGS).array
    np.testing.assert_allclose(first, cpu.generate(PROMPT, loras=a, **SETTINGS).array, atol=1e-5)
    trt.generate(PROMPT, loras=b, **SETTINGS)
    again = trt.generate(PROMPT, loras=a, **SETTINGS).array
    np.testing.assert_array_equal(again, first)
    engine = trt.engines["unet"].engine
    expected = merged_tensors(
        "unet", [(resolve(read_lora(loras["kohya"]), {"unet": mapped}), LoraWeights(0.7, 0.7))], mapped
    )
    locon_only = set(engine.weights) - set(expected)  # restored to the export's weights
    assert locon_only
    for name, value in expected.items():
        np.testing.assert_array_equal(engine.weights[name], value)
    for name in locon_only:
        np.testing.assert_array_equal(engine.weights[name], mapped.pristine(name))
    np.testing.assert_allclose(
        trt.generate(PROMPT, **SETTINGS).array, cpu.generate(PROMPT, **SETTINGS).array, atol=1e-5
    )
    assert [r["component"] for r in stats.refits].count("unet") == 4  # A, B, A, base


# ---------------------------------------------------------------- bad input
def run_cli(exported, *arguments):
    return CliRunner().invoke(
        main,
        [
            "generate",
            "--model",
            str(exported),
            "--steps",
            "1",
            "--height",
            "64",
            "--width",
            "64",
            "--quiet",
            *arguments,
        ],
    )


def test_bad_loras_are_one_clear_line(exported, loras, tmp_path, tiny_sdxl):
    not_lora = tmp_path / "weights.safetensors"
    save_file({"model.weight": torch.zeros(2, 2)}, str(not_lora))
    xl_reference = sdxl_reference("StableDiffusionXLPipeline", tiny_sdxl["base"])
    xl = kohya_lora(xl_reference, tmp_path / "xl.safetensors", seed=6, ldm_names=True)
    out = str(tmp_path / "o.png")
    cases = [
        (["a cat", "--lora", str(not_lora)], "is not a LoRA"),
        (["a cat", "--lora", str(xl)], "another model architecture"),
        (["a cat <lora:missing:1>", "--lora-dir", str(loras["kohya"].parent)], "unknown LoRA 'missing'"),
        (["a cat", "--lora", f"{loras['kohya']}:strong"], "is not a number"),
        (["a cat <lora:kohya:x>", "--lora-dir", str(loras["kohya"].parent)], "is not a number"),
    ]
    for arguments, message in cases:
        result = run_cli(exported, *arguments, "--out", out)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], result.output


def test_unmatched_keys_are_a_warning_naming_them(exported, loras, tmp_path):
    tensors = {key: torch.from_numpy(np.array(value)) for key, value in _tensors(loras["kohya"]).items()}
    tensors["lora_unet_no_such_layer.lora_down.weight"] = torch.zeros(4, 8)
    tensors["lora_unet_no_such_layer.lora_up.weight"] = torch.zeros(8, 4)
    path = tmp_path / "extra.safetensors"
    save_file(tensors, str(path))
    result = Pipeline.load(exported).generate(PROMPT, loras=[str(path)], steps=1, height=64, width=64)
    assert len(result.warnings) == 1 and "2 keys match no layer" in result.warnings[0]
    assert "lora_unet_no_such_layer.lora_down.weight" in result.warnings[0]


def _tensors(path: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(path))


def test_an_export_without_a_weights_map_says_to_re_export(exported, loras, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(exported, old)
    manifest = json.loads((old / "manifest.json").read_text())
    for spec in manifest["components"].values():
        spec.pop("weights_map", None)
    (old / "manifest.json").write_text(json.dumps(manifest))
    result = run_cli(old, "a cat", "--lora", str(loras["kohya"]), "--out", str(tmp_path / "o.png"))
    assert result.exit_code == 2 and "re-export the model to use LoRA" in result.output


# ---------------------------------------------------------------- servers
def test_servers_take_lora_tags_and_list_the_folder(pipeline, loras):
    from fastapi.testclient import TestClient

    from sdrt.serve.app import create_app

    with TestClient(create_app(pipeline)) as client:
        _serve_loras(client)


def _serve_loras(client):
    listed = client.get("/sdapi/v1/loras").json()
    assert {entry["name"] for entry in listed} == {"kohya", "locon", "peft", "other"}
    body = {
        "prompt": f"{PROMPT} <lora:kohya:0.7>",
        "steps": 4,
        "seed": 7,
        "width": 64,
        "height": 64,
        "sampler_name": "Euler",
        "cfg_scale": 7.5,
    }
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    assert "Lora hashes" in json.loads(response.json()["info"])["infotexts"][0]
    bad = client.post("/sdapi/v1/txt2img", json=dict(body, prompt="a cat <lora:nothing:1>"))
    assert bad.status_code == 400 and "unknown LoRA" in bad.text
    openai = client.post("/v1/images/generations", json={"prompt": "a cat <lora:nothing:1>", "size": "64x64"})
    assert openai.status_code == 400 and "unknown LoRA" in openai.text
    # Clients name LoRAs of the server's folder; a file on the server's disk is refused.
    path = str(next(iter(client.app.state.service.pipeline.loras.library.names().values())))
    for route, request in (
        ("/sdapi/v1/txt2img", dict(body, prompt=f"a cat <lora:{path}:0.5>")),
        ("/v1/images/generations", {"prompt": f"a cat <lora:{path}:0.5>", "size": "64x64"}),
    ):
        refused = client.post(route, json=request)
        assert refused.status_code == 400 and "not a path" in refused.text, refused.text


def test_bench_measures_a_lora(exported, loras, tmp_path):
    """`sdrt bench --lora` merges it in every run (with --compare, diffusers fuses it: not run
    here, to keep the suite's time)."""
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        main,
        [
            "bench",
            "--model",
            str(exported),
            "--lora",
            f"{loras['kohya']}:0.7",
            "--steps",
            "2",
            "--height",
            "64",
            "--width",
            "64",
            "--runs",
            "1",
            "--warmup",
            "0",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["settings"]["loras"] == [f"{loras['kohya']}:0.7"]
    assert report["sdrt"]["unet_step"]["p50"] > 0
