"""The tiny VAE decoder (issue 18: AutoencoderTiny, TAESD's architecture with random weights):
`--vae tiny` equals diffusers' pipeline with the same AutoencoderTiny as its VAE; previews every N
steps; the CLI, both servers and bench; bad input."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from conftest import reference_scheduler
from sdrt.cli import main
from sdrt.errors import GenerationError, ModelFolderError
from sdrt.export.exporter import ExportOptions, export_model
from sdrt.export.random_model import save_random_tiny_vae
from sdrt.runtime.features.preview import Preview
from sdrt.runtime.pipeline import Pipeline
from sdrt.runtime.request import GenerationRequest
from support.images import MAX_PIXEL_ERROR, assert_same_image

PROMPT = "a photo of a cat"
SETTINGS = dict(steps=4, seed=7, height=64, width=64, sampler="euler", guidance_scale=7.5)


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    return save_random_tiny_vae(tmp_path_factory.mktemp("taesd") / "taesd", seed=3)


@pytest.fixture(scope="module")
def exported(tiny_models, tiny_vae, tmp_path_factory):
    folder = tmp_path_factory.mktemp("with-tiny-vae") / "model"
    export_model(
        str(tiny_models["standard"]), folder, options=ExportOptions(tiny_vae=str(tiny_vae)), progress=lambda line: None
    )
    return folder


@pytest.fixture(scope="module")
def pipeline(exported):
    return Pipeline.load(exported)


def reference(tiny_models, tiny_vae):
    from diffusers import AutoencoderTiny, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_models["standard"],
        vae=AutoencoderTiny.from_pretrained(tiny_vae),
        safety_checker=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = reference_scheduler(SETTINGS["sampler"], pipe.scheduler.config)
    return pipe


def test_tiny_vae_decode_equals_diffusers_with_autoencoder_tiny(pipeline, tiny_models, tiny_vae):
    expected = reference(tiny_models, tiny_vae)(
        PROMPT,
        num_inference_steps=4,
        guidance_scale=7.5,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(7),
        output_type="np",
    ).images
    got = pipeline.generate(PROMPT, vae="tiny", **SETTINGS)
    assert_same_image(got.array, expected)
    full = pipeline.generate(PROMPT, **SETTINGS).array
    assert np.abs(full - got.array).max() > 10 * MAX_PIXEL_ERROR  # another decoder, another image
    assert got.parameters["vae"] == "tiny"


def test_previews_decode_the_latents_every_n_steps(pipeline, tiny_models, tiny_vae):
    """Each preview is the tiny VAE's decode of that step's latents: diffusers' callback gives
    the same latents, which its AutoencoderTiny decodes."""
    seen = []
    pipeline.run(
        GenerationRequest(PROMPT, **SETTINGS),
        preview=Preview(2, lambda step, total, images: seen.append((step, total, images))),
    )
    assert [(step, total) for step, total, _ in seen] == [(2, 4)]  # not after the last step
    latents = {}

    def keep(pipe, index, timestep, kwargs):
        latents[index + 1] = kwargs["latents"]
        return kwargs

    pipe = reference(tiny_models, tiny_vae)
    pipe(
        PROMPT,
        num_inference_steps=4,
        guidance_scale=7.5,
        height=64,
        width=64,
        output_type="np",
        generator=torch.Generator().manual_seed(7),
        callback_on_step_end=keep,
    )
    with torch.no_grad():
        decoded = pipe.vae.decode(latents[2] / pipe.vae.config.scaling_factor).sample
    expected = (decoded / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()[0]
    got = np.asarray(seen[0][2][0]).astype(np.float32) / 255
    assert np.abs(got - expected).max() <= MAX_PIXEL_ERROR + 0.5 / 255  # the preview is 8-bit


def test_cli_vae_tiny_and_previews(exported, pipeline, tmp_path):
    out = tmp_path / "cat.png"
    result = CliRunner().invoke(
        main,
        [
            "generate",
            PROMPT,
            "--model",
            str(exported),
            "--vae",
            "tiny",
            "--preview",
            "1",
            "--steps",
            "4",
            "--seed",
            "7",
            "--sampler",
            "euler",
            "--height",
            "64",
            "--width",
            "64",
            "--guidance",
            "7.5",
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.glob("cat-step-*.png")) == [
        "cat-step-1.png",
        "cat-step-2.png",
        "cat-step-3.png",
    ]
    expected = pipeline.generate(PROMPT, vae="tiny", **SETTINGS).images[0]
    written = Image.open(out)
    np.testing.assert_array_equal(np.asarray(written), np.asarray(expected))
    assert "VAE: TAESD" in written.info["parameters"]


def test_servers_pick_the_tiny_vae(pipeline):
    from fastapi.testclient import TestClient

    from sdrt.serve.app import ServeSettings, create_app

    expected = np.asarray(pipeline.generate(PROMPT, vae="tiny", **SETTINGS).images[0])
    with TestClient(create_app(pipeline, ServeSettings(randn_source="CPU"))) as client:
        body = {
            "prompt": PROMPT,
            "steps": 4,
            "seed": 7,
            "width": 64,
            "height": 64,
            "sampler_name": "euler",  # sdrt's own name: the diffusers-equal Euler of SETTINGS
            "cfg_scale": 7.5,
            "override_settings": {"sd_vae": "TAESD"},
        }
        response = client.post("/sdapi/v1/txt2img", json=body)
        assert response.status_code == 200, response.text
        got = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
        np.testing.assert_array_equal(np.asarray(got), expected)
        openai = {
            "prompt": PROMPT,
            "size": "64x64",
            "steps": 4,
            "seed": 7,
            "sampler": "euler",
            "guidance_scale": 7.5,
            "vae": "tiny",
        }
        response = client.post("/v1/images/generations", json=openai)
        assert response.status_code == 200, response.text
        got = Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"])))
        np.testing.assert_array_equal(np.asarray(got), expected)
        bad = client.post("/v1/images/generations", json={**openai, "vae": "huge"})
        assert bad.status_code == 400 and "unknown VAE 'huge'" in bad.text and '"vae"' in bad.text


def test_bench_measures_the_tiny_decode(exported, tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        main,
        [
            "bench",
            "--model",
            str(exported),
            "--vae",
            "tiny",
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
    assert report["settings"]["vae"] == "tiny" and report["sdrt"]["stages"]["vae_decoder"]["median"] > 0


def test_bad_tiny_vae_input_is_one_line(exported_tiny, tiny_models, tmp_path):
    plain = Pipeline.load(exported_tiny("standard"))
    with pytest.raises(GenerationError, match="this export has no tiny VAE: re-export the model with --tiny-vae"):
        plain.generate(PROMPT, vae="tiny", **SETTINGS)
    wrong = save_random_tiny_vae(tmp_path / "wrong", latent_channels=16)
    with pytest.raises(ModelFolderError, match="the tiny VAE takes 16 latent channels .* use the tiny VAE of this"):
        export_model(
            str(tiny_models["standard"]),
            tmp_path / "out",
            options=ExportOptions(tiny_vae=str(wrong)),
            progress=lambda line: None,
        )
    result = CliRunner().invoke(
        main,
        [
            "generate",
            PROMPT,
            "--model",
            str(exported_tiny("standard")),
            "--vae",
            "tiny",
            "--steps",
            "1",
            "--out",
            str(tmp_path / "x.png"),
        ],
    )
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output


def test_image_to_image_with_the_tiny_vae_equals_diffusers(pipeline, tiny_models, tiny_vae):
    from diffusers import AutoencoderTiny, StableDiffusionImg2ImgPipeline

    init = Image.fromarray((np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8))
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
        tiny_models["standard"],
        vae=AutoencoderTiny.from_pretrained(tiny_vae),
        safety_checker=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = reference_scheduler(SETTINGS["sampler"], pipe.scheduler.config)
    expected = pipe(
        PROMPT,
        image=init,
        strength=0.6,
        num_inference_steps=4,
        guidance_scale=7.5,
        generator=torch.Generator().manual_seed(7),
        output_type="np",
    ).images
    settings = {k: v for k, v in SETTINGS.items() if k not in ("height", "width")}
    got = pipeline.generate(PROMPT, init_image=init, strength=0.6, vae="tiny", **settings).array
    assert_same_image(got, expected)


def test_tensorrt_builds_and_runs_the_tiny_vae(exported, monkeypatch, tmp_path):
    import shutil

    import fake_tensorrt

    stats = fake_tensorrt.install(monkeypatch)
    model = tmp_path / "model"
    shutil.copytree(exported, model)
    result = CliRunner().invoke(main, ["build", str(model), "--static", "64x64", "--max-batch", "1"])
    assert result.exit_code == 0, result.output
    assert any(b["onnx"].endswith("vae_decoder_tiny/model.onnx") for b in stats.builds)
    got = Pipeline.load(model, backend="tensorrt").generate(PROMPT, vae="tiny", **SETTINGS).array
    np.testing.assert_allclose(got, Pipeline.load(model).generate(PROMPT, vae="tiny", **SETTINGS).array, atol=1e-5)


def test_a1111_progress_streams_previews(pipeline):
    """With --preview-every, /sdapi/v1/progress reports the running generation's step and its
    latest preview (the tiny VAE's); idle, it reports nothing running."""
    import threading

    from fastapi.testclient import TestClient

    from sdrt.serve.app import create_app
    from sdrt.serve.schemas import ServeSettings

    with TestClient(create_app(pipeline, ServeSettings(preview_every=2))) as client:
        idle = client.get("/sdapi/v1/progress").json()
        assert idle["progress"] == 0 and idle["current_image"] is None and idle["state"]["job_count"] == 0
        body = {"prompt": PROMPT, "steps": 40, "seed": 7, "width": 64, "height": 64, "sampler_name": "Euler"}
        done = threading.Event()
        thread = threading.Thread(target=lambda: (client.post("/sdapi/v1/txt2img", json=body), done.set()))
        thread.start()
        seen = []
        while not done.is_set():
            report = client.get("/sdapi/v1/progress").json()
            if report["current_image"] is not None:
                seen.append(report)
        thread.join()
    assert seen, "no preview was reported while the generation ran"
    report = seen[-1]
    assert 0 < report["progress"] <= 1 and report["state"]["sampling_steps"] == 40 and report["state"]["job_count"] == 1
    assert report["state"]["sampling_step"] >= 2
    preview = Image.open(io.BytesIO(base64.b64decode(report["current_image"])))
    assert preview.size == (64, 64)


def test_the_batcher_keeps_decoders_apart():
    from sdrt.serve.batching import batch_key

    tiny, full = (batch_key(GenerationRequest(PROMPT, vae=vae, seed=1), 64, 64) for vae in ("tiny", "full"))
    assert tiny is not None and full is not None and tiny != full
    assert batch_key(GenerationRequest("another prompt", vae="tiny", seed=2), 64, 64) == tiny


@pytest.mark.slow  # 9 s: a second SDXL export
def test_an_sdxl_tiny_vae_equals_diffusers(tiny_sdxl, tmp_path):
    """TAESDXL's place: the tiny VAE of a tiny SDXL base, against StableDiffusionXLPipeline with it."""
    from diffusers import AutoencoderTiny

    from conftest import sdxl_reference

    taesdxl = save_random_tiny_vae(tmp_path / "taesdxl", seed=4)
    folder = tmp_path / "sdxl"
    export_model(
        str(tiny_sdxl["base"]), folder, options=ExportOptions(tiny_vae=str(taesdxl)), progress=lambda line: None
    )
    reference_pipeline = sdxl_reference("StableDiffusionXLPipeline", tiny_sdxl["base"])
    reference_pipeline.vae = AutoencoderTiny.from_pretrained(taesdxl)
    reference_pipeline.scheduler = reference_scheduler(SETTINGS["sampler"], reference_pipeline.scheduler.config)
    expected = reference_pipeline(
        PROMPT,
        num_inference_steps=4,
        guidance_scale=7.5,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(7),
        output_type="np",
    ).images
    got = Pipeline.load(folder).generate(PROMPT, vae="tiny", **SETTINGS).array
    assert_same_image(got, expected)
