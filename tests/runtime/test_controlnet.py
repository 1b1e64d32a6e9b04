"""ControlNet against diffusers' ControlNet pipelines on tiny random models: one and two
ControlNets, scales, guidance windows, guess mode, image-to-image, inpainting and SDXL; the
preprocessors against OpenCV; the CLI; bad inputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image, ImageDraw

from conftest import reference_scheduler
from sdrt.cli import main
from sdrt.errors import GenerationError
from sdrt.export.exporter import export_model
from sdrt.export.random_model import TINY_CONDITIONING_EMBEDDING, save_random_controlnet
from sdrt.runtime.features.controlnet.units import ControlUnit
from sdrt.runtime.pipeline import Pipeline
from support.images import MAX_PIXEL_ERROR, assert_same_image

SAMPLER = "euler"
SETTINGS = dict(steps=4, seed=7, height=64, width=64, sampler=SAMPLER, guidance_scale=7.5)
PROMPT = "a photo of a cat"
NO_HEAVY_IMPORTS = Path(__file__).parent.parent / "no_heavy_imports.py"


def shapes_image(seed: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    """A control map like a real one: a few filled shapes on black."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = sorted(rng.integers(0, size[0], 2)), sorted(rng.integers(0, size[1], 2))
        draw.ellipse([x[0], y[0], x[1] + 4, y[1] + 4], fill=tuple(int(v) for v in rng.integers(64, 256, 3)))
    return image


@pytest.fixture(scope="module")
def source(tiny_models):
    return tiny_models["standard"]


@pytest.fixture(scope="module")
def controlnets(tiny_controlnets) -> dict[str, Path]:
    """Two tiny random ControlNets for the tiny SD model: diffusers folders and exports (conftest)."""
    return tiny_controlnets


@pytest.fixture(scope="module")
def exported_controlnets(controlnets) -> Path:
    return next(iter(controlnets.values())).parent.parent / "exported"


@pytest.fixture(scope="module")
def pipeline(exported_tiny, exported_controlnets):
    return Pipeline.load(exported_tiny("standard"), controlnet_dir=exported_controlnets)


def reference(class_name: str, source: Path, controlnets: list[Path]):
    import diffusers
    from diffusers import ControlNetModel

    models = [ControlNetModel.from_pretrained(path) for path in controlnets]
    pipeline = getattr(diffusers, class_name).from_pretrained(
        source, controlnet=models[0] if len(models) == 1 else models, safety_checker=None, requires_safety_checker=False
    )
    pipeline.set_progress_bar_config(disable=True)
    pipeline.scheduler = reference_scheduler(SAMPLER, pipeline.scheduler.config)
    return pipeline


def run_reference(pipeline, **settings) -> np.ndarray:
    return pipeline(
        PROMPT,
        num_inference_steps=SETTINGS["steps"],
        guidance_scale=SETTINGS["guidance_scale"],
        generator=torch.Generator().manual_seed(SETTINGS["seed"]),
        output_type="np",
        **settings,
    ).images


def test_one_controlnet_at_half_scale_equals_diffusers(pipeline, source, controlnets):
    image = shapes_image(1)
    expected = run_reference(
        reference("StableDiffusionControlNetPipeline", source, [controlnets["edges"]]),
        image=image,
        controlnet_conditioning_scale=0.5,
    )
    got = pipeline.generate(PROMPT, controlnets=[ControlUnit("edges", image, 0.5)], **SETTINGS)
    assert_same_image(got.array, expected)
    plain = pipeline.generate(PROMPT, **SETTINGS).array
    assert np.abs(plain - got.array).max() > 10 * MAX_PIXEL_ERROR  # the ControlNet did something


def test_two_controlnets_with_guidance_windows_equal_diffusers(pipeline, source, controlnets):
    images = [shapes_image(1), shapes_image(2)]
    expected = run_reference(
        reference("StableDiffusionControlNetPipeline", source, [controlnets["edges"], controlnets["depth"]]),
        image=images,
        controlnet_conditioning_scale=[0.5, 0.8],
        control_guidance_start=[0.2, 0.0],
        control_guidance_end=[0.8, 1.0],
    )
    units = [ControlUnit("edges", images[0], 0.5, start=0.2, end=0.8), ControlUnit("depth", images[1], 0.8)]
    assert_same_image(pipeline.generate(PROMPT, controlnets=units, **SETTINGS).array, expected)


def test_guess_mode_equals_diffusers(pipeline, source, controlnets):
    image = shapes_image(3)
    expected = run_reference(
        reference("StableDiffusionControlNetPipeline", source, [controlnets["edges"]]), image=image, guess_mode=True
    )
    got = pipeline.generate(
        PROMPT, controlnets=[ControlUnit("edges", image, mode="ControlNet is more important")], **SETTINGS
    )
    assert_same_image(got.array, expected)


def test_prompt_mode_without_guidance_equals_diffusers_guess_mode(pipeline, source, controlnets):
    """ "My prompt is more important" weights residuals as guess mode does, on both halves: with
    no unconditional half the two are the same computation."""
    image = shapes_image(4)
    model = reference("StableDiffusionControlNetPipeline", source, [controlnets["edges"]])
    expected = model(
        PROMPT,
        image=image,
        num_inference_steps=SETTINGS["steps"],
        guidance_scale=1.0,
        guess_mode=True,
        generator=torch.Generator().manual_seed(SETTINGS["seed"]),
        output_type="np",
    ).images
    got = pipeline.generate(
        PROMPT, controlnets=[ControlUnit("edges", image, mode="prompt")], **{**SETTINGS, "guidance_scale": 1.0}
    )
    assert_same_image(got.array, expected)


def test_image_to_image_with_a_controlnet_equals_diffusers(pipeline, source, controlnets):
    init, control = shapes_image(5), shapes_image(6)
    expected = run_reference(
        reference("StableDiffusionControlNetImg2ImgPipeline", source, [controlnets["depth"]]),
        image=init,
        control_image=control,
        strength=0.6,
        controlnet_conditioning_scale=0.8,
    )
    settings = {k: v for k, v in SETTINGS.items() if k not in ("height", "width")}
    got = pipeline.generate(
        PROMPT, init_image=init, strength=0.6, controlnets=[ControlUnit("depth", control, 0.8)], **settings
    )
    assert_same_image(got.array, expected)


def test_a_control_image_of_another_size_is_resized_with_a_warning(pipeline, source, controlnets):
    image = shapes_image(7, (96, 80))
    expected = run_reference(
        reference("StableDiffusionControlNetPipeline", source, [controlnets["edges"]]), image=image, height=64, width=64
    )
    got = pipeline.generate(PROMPT, controlnets=[ControlUnit("edges", image)], **SETTINGS)
    assert_same_image(got.array, expected)
    assert any("96x80" in warning and "resized to 64x64" in warning for warning in got.warnings), got.warnings


def test_inpainting_with_a_controlnet_equals_diffusers(pipeline, source, controlnets):
    init, control = shapes_image(8), shapes_image(9)
    mask = Image.new("L", (64, 64))
    ImageDraw.Draw(mask).rectangle([16, 16, 47, 47], fill=255)
    expected = run_reference(
        reference("StableDiffusionControlNetInpaintPipeline", source, [controlnets["edges"]]),
        image=init,
        mask_image=mask,
        control_image=control,
        strength=1.0,
        controlnet_conditioning_scale=0.7,
        height=64,
        width=64,
    )
    got = pipeline.generate(
        PROMPT,
        init_image=init,
        mask_image=mask,
        strength=1.0,
        controlnets=[ControlUnit("edges", control, 0.7)],
        **SETTINGS,
    )
    assert_same_image(got.array, expected)


# ---------------------------------------------------------------- SDXL
@pytest.fixture(scope="module")
def sdxl_controlnet(tiny_sdxl, tmp_path_factory) -> tuple[Path, Path]:
    """(diffusers folder, export) of a tiny random SDXL ControlNet."""
    root = tmp_path_factory.mktemp("sdxl-controlnet")
    folder = save_random_controlnet(
        root / "diffusers", tiny_sdxl["base"], seed=3, conditioning_embedding=TINY_CONDITIONING_EMBEDDING
    )
    export_model(str(folder), root / "exported", progress=lambda line: None)
    return folder, root / "exported"


@pytest.mark.slow  # the suite's costliest check; SD 1.x ControlNets stay in the default run
def test_an_sdxl_controlnet_equals_diffusers(tiny_sdxl, exported_sdxl, sdxl_controlnet):
    from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline

    folder, exported = sdxl_controlnet
    image = shapes_image(10)
    reference_pipeline = StableDiffusionXLControlNetPipeline.from_pretrained(
        tiny_sdxl["base"], controlnet=ControlNetModel.from_pretrained(folder), add_watermarker=False
    )
    reference_pipeline.set_progress_bar_config(disable=True)
    reference_pipeline.scheduler = reference_scheduler(SAMPLER, reference_pipeline.scheduler.config)
    expected = run_reference(
        reference_pipeline,
        image=image,
        controlnet_conditioning_scale=0.6,
        control_guidance_start=0.2,
        control_guidance_end=0.8,
        height=64,
        width=64,
    )
    got = Pipeline.load(exported_sdxl("base")).generate(
        PROMPT, controlnets=[ControlUnit(str(exported), image, 0.6, start=0.2, end=0.8)], **SETTINGS
    )
    assert_same_image(got.array, expected)


def test_an_sdxl_controlnet_on_an_sd15_model_is_one_line(pipeline, sdxl_controlnet):
    with pytest.raises(GenerationError, match="is for sdxl models and .* is sd1; use a ControlNet trained for sd1"):
        pipeline.generate(PROMPT, controlnets=[ControlUnit(str(sdxl_controlnet[1]), shapes_image(1))], **SETTINGS)


# ---------------------------------------------------------------- preprocessors
def test_canny_equals_opencv():
    cv2 = pytest.importorskip("cv2")
    from sdrt.runtime.features.controlnet.preprocess import canny

    rng = np.random.default_rng(0)
    for seed, (low, high) in enumerate([(100, 200), (50, 100), (10, 300), (200, 100)]):
        pixels = np.asarray(shapes_image(seed, (97, 80)))
        if seed % 2:  # noise: many weak edges, ties and broken chains for the hysteresis
            pixels = np.clip(pixels.astype(int) + rng.integers(-25, 25, pixels.shape), 0, 255).astype(np.uint8)
        expected = cv2.Canny(pixels, low, high)
        assert np.count_nonzero(expected) > 100
        np.testing.assert_array_equal(canny(pixels, low, high), expected)


def test_invert_and_canny_preprocess_the_control_image(pipeline):
    from sdrt.runtime.features.controlnet.preprocess import canny

    photo = shapes_image(11)
    edges = Image.fromarray(np.repeat(canny(np.asarray(photo), 100, 200)[..., None], 3, axis=2))
    direct = pipeline.generate(PROMPT, controlnets=[ControlUnit("edges", edges)], **SETTINGS).array
    made = pipeline.generate(PROMPT, controlnets=[ControlUnit("edges", photo, preprocessor="canny")], **SETTINGS)
    np.testing.assert_array_equal(made.array, direct)
    inverted = Image.fromarray(255 - np.asarray(edges))
    again = pipeline.generate(PROMPT, controlnets=[ControlUnit("edges", inverted, preprocessor="invert")], **SETTINGS)
    np.testing.assert_array_equal(again.array, direct)


# ---------------------------------------------------------------- no torch, CLI, servers, bad input
def test_generation_with_a_controlnet_needs_no_torch(exported_tiny, exported_controlnets, tmp_path):
    control = tmp_path / "control.png"
    shapes_image(1).save(control)
    code = (
        f"from sdrt.runtime.pipeline import Pipeline\n"
        f"from sdrt.runtime.features.controlnet.units import ControlUnit\n"
        f"p = Pipeline.load({str(exported_tiny('standard'))!r}, controlnet_dir={str(exported_controlnets)!r})\n"
        f"r = p.generate('a cat', controlnets=[ControlUnit('edges', {str(control)!r}, 0.5, mode='controlnet')],"
        f" steps=2, seed=1, height=64, width=64)\n"
        f"assert r.parameters['controlnets'][0]['model'] == 'edges', r.parameters"
    )
    completed = subprocess.run([sys.executable, str(NO_HEAVY_IMPORTS), code], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr


def test_cli_generate_with_two_controlnets_equals_the_api(pipeline, exported_tiny, exported_controlnets, tmp_path):
    images = []
    for seed in (1, 2):
        images.append(tmp_path / f"control{seed}.png")
        shapes_image(seed).save(images[-1])
    out = tmp_path / "out.png"
    args = [
        "generate",
        PROMPT,
        "--model",
        str(exported_tiny("standard")),
        "--controlnet-dir",
        str(exported_controlnets),
        "--controlnet",
        "edges:0.5",
        "--control-image",
        str(images[0]),
        "--controlnet",
        str(exported_controlnets / "depth"),
        "--control-image",
        str(images[1]),
        "--control-start",
        "0.2",
        "--control-start",
        "0",
        "--control-mode",
        "prompt",
        "--steps",
        "4",
        "--seed",
        "7",
        "--sampler",
        SAMPLER,
        "--guidance",
        "7.5",
        "--out",
        str(out),
        "--quiet",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    units = [
        ControlUnit("edges", Image.open(images[0]), 0.5, start=0.2, mode="prompt"),
        ControlUnit("depth", Image.open(images[1]), start=0.0, mode="prompt"),
    ]
    expected = pipeline.generate(PROMPT, controlnets=units, **SETTINGS).images[0]
    written = Image.open(out)
    np.testing.assert_array_equal(np.asarray(written), np.asarray(expected))
    assert 'ControlNet 0: "Module: none, Model: edges, Weight: 0.5, Guidance Start: 0.2' in written.info["parameters"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--controlnet", "edges"], "--controlnet is given 1 time(s) and --control-image 0"),
        (["--controlnet", "nothing", "--control-image", "IMAGE"], "unknown ControlNet 'nothing'"),
        (["--controlnet", "edges:x", "--control-image", "IMAGE"], "the scale 'x' is not a number"),
        (
            ["--controlnet", "edges", "--control-image", "IMAGE", "--control-start", "0.9", "--control-end", "0.1"],
            "start and end must satisfy 0 <= start < end <= 1",
        ),
        (["--controlnet", "edges", "--control-image", "missing.png"], "input image missing.png does not exist"),
    ],
)
def test_bad_controlnet_input_is_one_line(exported_tiny, exported_controlnets, tmp_path, args, message):
    image = tmp_path / "control.png"
    shapes_image(1).save(image)
    args = [str(image) if a == "IMAGE" else a for a in args]
    result = CliRunner().invoke(
        main,
        [
            "generate",
            PROMPT,
            "--model",
            str(exported_tiny("standard")),
            "--controlnet-dir",
            str(exported_controlnets),
            "--steps",
            "2",
            "--out",
            str(tmp_path / "o.png"),
            *args,
        ],
    )
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_too_many_controlnets_are_refused(pipeline):
    with pytest.raises(GenerationError, match="9 ControlNets in one request; at most 8"):
        pipeline.generate(PROMPT, controlnets=[ControlUnit("edges", shapes_image(1))] * 9, **SETTINGS)


def test_a_model_exported_before_controlnet_says_to_re_export(pipeline, exported_controlnets):
    from dataclasses import replace

    from sdrt.runtime.features.controlnet.manifest import ControlNetManifest

    unet = pipeline.manifest.components["unet"]
    old_unet = replace(unet, inputs=[t for t in unet.inputs if "residual" not in t.name])
    old = replace(pipeline.manifest, components={**pipeline.manifest.components, "unet": old_unet})
    with pytest.raises(Exception, match="exported before ControlNet support; re-export it"):
        ControlNetManifest.load(exported_controlnets / "edges").for_model("edges", old, "old-model")


def test_a1111_controlnet_requests_and_model_list(pipeline):
    import base64
    import io

    from fastapi.testclient import TestClient

    from sdrt.serve.app import ServeSettings, create_app

    buffer = io.BytesIO()
    shapes_image(1).save(buffer, format="PNG")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    with TestClient(create_app(pipeline, ServeSettings(randn_source="CPU"))) as client:
        assert set(client.get("/controlnet/model_list").json()["model_list"]) == {"edges", "depth"}
        assert "canny" in client.get("/controlnet/module_list").json()["module_list"]
        unit = {
            "image": encoded,
            "module": "none",
            "model": "edges [0123abcd]",
            "weight": 0.5,
            "guidance_start": 0.0,
            "guidance_end": 1.0,
            "control_mode": "Balanced",
        }
        body = {
            "prompt": PROMPT,
            "steps": 4,
            "seed": 7,
            "width": 64,
            "height": 64,
            "sampler_name": "euler",  # sdrt's own name: the diffusers-equal Euler of SETTINGS
            "cfg_scale": 7.5,
            "alwayson_scripts": {"controlnet": {"args": [unit, {"enabled": False}]}},
        }
        response = client.post("/sdapi/v1/txt2img", json=body)
        assert response.status_code == 200, response.text
        got = np.asarray(Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]))))
        expected = pipeline.generate(PROMPT, controlnets=[ControlUnit("edges", shapes_image(1), 0.5)], **SETTINGS)
        np.testing.assert_array_equal(got, np.asarray(expected.images[0]))
        bad = client.post(
            "/sdapi/v1/txt2img",
            json={**body, "alwayson_scripts": {"controlnet": {"args": [{**unit, "model": "nothing"}]}}},
        )
        assert bad.status_code == 400 and "unknown ControlNet 'nothing'" in bad.text
        assert "alwayson_scripts.controlnet.args" in bad.text
        missing = client.post(
            "/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"controlnet": {"args": [{**unit, "image": None}]}}}
        )
        assert missing.status_code == 400 and "has no control image" in missing.text
        # img2img: a unit without an image guides with the init image, as the extension does.
        init = {
            **body,
            "init_images": [encoded],
            "denoising_strength": 0.6,
            "alwayson_scripts": {"controlnet": {"args": [{**unit, "image": None}]}},
        }
        response = client.post("/sdapi/v1/img2img", json=init)
        assert response.status_code == 200, response.text
        got = np.asarray(Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]))))
        settings = {k: v for k, v in SETTINGS.items() if k not in ("height", "width")}
        expected = pipeline.generate(
            PROMPT,
            init_image=shapes_image(1),
            strength=0.6,
            controlnets=[ControlUnit("edges", shapes_image(1), 0.5)],
            **settings,
        )
        np.testing.assert_array_equal(got, np.asarray(expected.images[0]))
        # The OpenAI route takes sdrt's `controlnets` extension.
        openai = {
            "prompt": PROMPT,
            "size": "64x64",
            "steps": 4,
            "seed": 7,
            "sampler": SAMPLER,
            "guidance_scale": 7.5,
            "controlnets": [{"model": "edges", "image": encoded, "scale": 0.5}],
        }
        response = client.post("/v1/images/generations", json=openai)
        assert response.status_code == 200, response.text
        got = np.asarray(Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"]))))
        np.testing.assert_array_equal(
            got,
            np.asarray(
                pipeline.generate(PROMPT, controlnets=[ControlUnit("edges", shapes_image(1), 0.5)], **SETTINGS).images[
                    0
                ]
            ),
        )
        bad = client.post(
            "/v1/images/generations", json={**openai, "controlnets": [{"model": "nothing", "image": encoded}]}
        )
        assert bad.status_code == 400 and "unknown ControlNet 'nothing'" in bad.text
        # Clients name ControlNets; a path on the server's disk is refused on both routes.
        path = str(pipeline.controlnets.names()["edges"])
        bad = client.post("/v1/images/generations", json={**openai, "controlnets": [{"model": path, "image": encoded}]})
        assert bad.status_code == 400 and "not a path" in bad.text and "controlnets[0].model" in bad.text
        bad = client.post(
            "/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"controlnet": {"args": [{**unit, "model": path}]}}}
        )
        assert bad.status_code == 400 and "not a path" in bad.text


def test_tensorrt_builds_the_controlnet_with_the_models_profile(
    exported_tiny, exported_controlnets, monkeypatch, tmp_path
):
    import shutil

    import fake_tensorrt

    stats = fake_tensorrt.install(monkeypatch)
    model, controlnet = tmp_path / "model", tmp_path / "edges"
    shutil.copytree(exported_tiny("standard"), model)
    shutil.copytree(exported_controlnets / "edges", controlnet)
    result = CliRunner().invoke(main, ["build", str(model), "--static", "64x64", "--max-batch", "1"])
    assert result.exit_code == 0, result.output
    unet = next(b for b in stats.builds if b["onnx"].endswith("unet/model.onnx"))
    units = [ControlUnit(str(controlnet), shapes_image(1), 0.5, start=0.2, mode="controlnet")]
    trt = Pipeline.load(model, backend="tensorrt")
    got = trt.generate(PROMPT, controlnets=units, **SETTINGS).array
    built = [b for b in stats.builds if b["onnx"].endswith("controlnet/model.onnx")]
    assert len(built) == 1 and list((controlnet / "tensorrt").glob("controlnet-*.plan"))
    profile = built[0]["profile"]  # the model's: its static size and batch
    assert any("residual" in name for name in unet["profile"])
    for name in ("sample", "timestep", "encoder_hidden_states"):
        assert profile[name] == unet["profile"][name], name
    assert all(shape[2:] == [64, 64] for shape in profile["controlnet_cond"]), profile["controlnet_cond"]
    expected = Pipeline.load(model).generate(PROMPT, controlnets=units, **SETTINGS).array
    np.testing.assert_allclose(got, expected, atol=1e-5)
    trt.generate(PROMPT, controlnets=units, **SETTINGS)
    assert len([b for b in stats.builds if b["onnx"].endswith("controlnet/model.onnx")]) == 1  # kept


def test_bench_reports_the_controlnets_cost_per_step(exported_tiny, exported_controlnets, tmp_path):
    import json

    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        main,
        [
            "bench",
            "--model",
            str(exported_tiny("standard")),
            "--controlnet",
            f"{exported_controlnets / 'edges'}:0.5",
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
    assert report["sdrt"]["controlnet_step"]["count"] == 2 and report["sdrt"]["controlnet_step"]["median"] > 0
    assert "ControlNets per step" in result.output


def test_loaded_controlnets_are_bounded(pipeline, monkeypatch):
    import sdrt.runtime.features.controlnet.library as library

    monkeypatch.setattr(library, "KEPT_CONTROLNETS", 1)
    first = pipeline.generate(PROMPT, controlnets=[ControlUnit("edges", shapes_image(1))], **SETTINGS).array
    pipeline.generate(PROMPT, controlnets=[ControlUnit("depth", shapes_image(1))], **SETTINGS)
    assert [loaded.name for loaded in pipeline.controlnets._loaded.values()] == ["depth"]
    again = pipeline.generate(PROMPT, controlnets=[ControlUnit("edges", shapes_image(1))], **SETTINGS).array
    np.testing.assert_array_equal(again, first)  # loaded again, the same engine


def test_a_controlnet_hub_id_is_exported_as_a_controlnet(controlnets, monkeypatch, tmp_path):
    """A hub repository without model_index.json (what the hub answers for a ControlNet's) is
    loaded as a ControlNetModel; the hub is stood in for by the tiny ControlNet's folder."""
    import diffusers
    from huggingface_hub.errors import EntryNotFoundError

    from sdrt.runtime.features.controlnet.manifest import ControlNetManifest

    def no_index(source, *args, **kwargs):
        raise EntryNotFoundError(f"{source} has no model_index.json")

    real = diffusers.ControlNetModel.from_pretrained.__func__

    def from_hub(cls, source, **kwargs):
        assert source == "someone/canny", source
        return real(cls, controlnets["edges"])

    monkeypatch.setattr(diffusers.DiffusionPipeline, "load_config", staticmethod(no_index))
    monkeypatch.setattr(diffusers.ControlNetModel, "from_pretrained", classmethod(from_hub))
    export_model("someone/canny", tmp_path / "canny", progress=lambda line: None)
    manifest = ControlNetManifest.load(tmp_path / "canny")
    assert manifest.family == "sd1" and manifest.source == {"model": "someone/canny"}


def test_a_single_file_controlnet_exports_like_its_folder(controlnets, pipeline, tmp_path):
    """The original-layout .safetensors (control_model.*) through diffusers' from_single_file,
    with the folder's config offline: the same images as the folder's export."""
    from diffusers import ControlNetModel

    from sdrt.export.ldm_checkpoint import save_ldm_controlnet

    path = save_ldm_controlnet(ControlNetModel.from_pretrained(controlnets["edges"]), tmp_path / "edges.safetensors")
    result = CliRunner().invoke(
        main, ["export", str(path), "--out", str(tmp_path / "single"), "--config", str(controlnets["edges"])]
    )
    assert result.exit_code == 0, result.output
    units = lambda model: [ControlUnit(model, shapes_image(1), 0.7)]  # noqa: E731
    got = pipeline.generate(PROMPT, controlnets=units(str(tmp_path / "single")), **SETTINGS).array
    np.testing.assert_allclose(got, pipeline.generate(PROMPT, controlnets=units("edges"), **SETTINGS).array, atol=1e-6)
