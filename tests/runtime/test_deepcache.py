"""DeepCache against the `deepcache` package's DeepCacheSDHelper on diffusers' pipeline (same
interval and branch), and its plumbing: export, CLI, both servers, bench, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import diffusers_pipeline, reference_scheduler
from sdrt.cli import main
from sdrt.errors import GenerationError
from sdrt.runtime.features.deepcache import DeepCache
from sdrt.runtime.pipeline import Pipeline
from support.images import assert_same_image

PROMPT = "a photo of a cat"


@pytest.fixture(scope="module")
def export(tiny_models, tmp_path_factory):
    from sdrt.export.exporter import ExportOptions, export_model

    folder = tmp_path_factory.mktemp("deepcache") / "tiny"
    export_model(
        str(tiny_models["standard"]), folder, options=ExportOptions(deepcache=True), progress=lambda line: None
    )
    return folder


@pytest.fixture(scope="module")
def ours(export) -> Pipeline:
    return Pipeline.load(export)


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
@pytest.mark.parametrize("interval", [2, 3])
def test_deepcache_equals_the_deepcache_package(ours, tiny_models, sampler, interval):
    from DeepCache import DeepCacheSDHelper

    reference = diffusers_pipeline("StableDiffusionPipeline", tiny_models["standard"])
    config = json.loads((tiny_models["standard"] / "scheduler" / "scheduler_config.json").read_text())
    reference.scheduler = reference_scheduler(sampler, config)
    helper = DeepCacheSDHelper(pipe=reference)
    helper.set_params(cache_interval=interval, cache_branch_id=0)
    helper.enable()
    expected = reference(
        PROMPT,
        num_inference_steps=7,
        height=64,
        width=96,
        negative_prompt="blurry",
        output_type="np",
        generator=torch.Generator("cpu").manual_seed(3),
    ).images
    helper.disable()
    result = ours.generate(
        PROMPT,
        steps=7,
        seed=3,
        sampler=sampler,
        height=64,
        width=96,
        negative_prompt="blurry",
        deepcache=DeepCache(interval),
    )
    assert_same_image(result.array, expected)
    plain = ours.generate(PROMPT, steps=7, seed=3, sampler=sampler, height=64, width=96, negative_prompt="blurry")
    assert np.abs(plain.array - expected).max() > 4 / 255  # caching changed the image: the check can fail
    assert result.parameters["deepcache"] == f"{interval}:0"


def test_plain_generation_is_unchanged_by_the_deepcache_graphs(ours, exported_tiny):
    plain = Pipeline.load(exported_tiny("standard")).generate(PROMPT, steps=3, seed=1)
    same = ours.generate(PROMPT, steps=3, seed=1)
    assert np.abs(plain.array - same.array).max() <= 1e-5  # the same UNet graph plus one output


def test_image_to_image_and_the_cli_and_both_servers(ours, export, tmp_path):
    import httpx
    from PIL import Image

    from sdrt.serve.app import ServeSettings, create_app
    from support.serving import decode_png, live_server

    photo = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    img2img = ours.generate(PROMPT, init_image=photo, strength=0.7, steps=6, seed=2, deepcache=DeepCache(2))
    assert img2img.images[0].size == (64, 64)
    expected = ours.generate(PROMPT, steps=4, seed=5, sampler="euler", guidance_scale=7.0, deepcache=DeepCache(3))
    out = tmp_path / "cat.png"
    run = CliRunner().invoke(
        main,
        [
            "generate",
            PROMPT,
            "--model",
            str(export),
            "--steps",
            "4",
            "--seed",
            "5",
            "--sampler",
            "euler",
            "--guidance",
            "7",
            "--deepcache",
            "3:0",
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert run.exit_code == 0, run.output
    with Image.open(out) as picture:
        np.testing.assert_array_equal(np.asarray(picture), np.asarray(expected.images[0]))
        assert 'DeepCache: "3:0"' in picture.info["parameters"]
    with live_server(create_app(ours, ServeSettings(randn_source="CPU"))) as url:
        a1111 = httpx.post(
            f"{url}/sdapi/v1/txt2img",
            timeout=60,
            json={"prompt": PROMPT, "steps": 4, "seed": 5, "sampler_name": "euler", "cfg_scale": 7, "deepcache": "3"},
        ).json()
        openai = httpx.post(
            f"{url}/v1/images/generations",
            timeout=60,
            json={"prompt": PROMPT, "steps": 4, "seed": 5, "sampler": "euler", "guidance_scale": 7, "deepcache": 3},
        ).json()
        bad = httpx.post(f"{url}/v1/images/generations", timeout=60, json={"prompt": PROMPT, "deepcache": "2:1"})
    for data in (a1111["images"][0], openai["data"][0]["b64_json"]):
        np.testing.assert_array_equal(np.asarray(decode_png(data)), np.asarray(expected.images[0]))
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "deepcache"


def test_bad_input_is_one_clear_line(ours, exported_tiny, export):
    with pytest.raises(GenerationError, match="re-export it with `sdrt export --deepcache`"):
        Pipeline.load(exported_tiny("standard")).generate(PROMPT, steps=2, deepcache=DeepCache(2))
    with pytest.raises(GenerationError, match="branch 1 is not exported"):
        ours.generate(PROMPT, steps=2, deepcache=DeepCache(2, 1))
    with pytest.raises(GenerationError, match="calls the UNet twice a step"):
        ours.generate(PROMPT, steps=2, sampler="heun", deepcache=DeepCache(2))
    run = CliRunner().invoke(main, ["generate", PROMPT, "--model", str(export), "--deepcache", "0", "--quiet"])
    assert (
        run.exit_code == 2 and "interval must be a whole number from 1" in run.output and "Traceback" not in run.output
    )
    run = CliRunner().invoke(
        main,
        ["generate", PROMPT, "--model", str(exported_tiny("standard")), "--steps", "1", "--deepcache", "2", "--quiet"],
    )
    assert run.exit_code == 2 and "re-export it with" in run.output


def test_bench_measures_deepcache(export, tmp_path):
    out = tmp_path / "deepcache.json"
    run = CliRunner().invoke(
        main,
        [
            "bench",
            "--model",
            str(export),
            "--steps",
            "4",
            "--runs",
            "1",
            "--warmup",
            "0",
            "--deepcache",
            "2",
            "--json",
            str(out),
        ],
    )
    assert run.exit_code == 0, run.output
    assert json.loads(out.read_text())["settings"]["deepcache"] == "2"


def test_bench_latency_table(export, tmp_path):
    out = tmp_path / "table.json"
    run = CliRunner().invoke(
        main,
        [
            "bench",
            "--model",
            str(export),
            "--latency-table",
            "--steps",
            "6",
            "--sampler",
            "euler",
            "--runs",
            "1",
            "--warmup",
            "0",
            "--json",
            str(out),
        ],
    )
    assert run.exit_code == 0, run.output
    rows = json.loads(out.read_text())["items"]
    assert list(rows) == ["plain", "lcm_4", "tcd_4", "deepcache_2", "deepcache_3"]
    assert rows["plain"]["speedup"] == 1.0 and rows["plain"]["mean_abs_255"] == 0 and rows["plain"]["psnr_db"] is None
    assert rows["deepcache_3"]["mean_abs_255"] > 0 and rows["deepcache_3"]["unet_calls"] == rows["plain"]["unet_calls"]
    assert rows["lcm_4"]["steps"] == 4 and "speed-up" in run.output


def test_tensorrt_through_the_fake(export, tmp_path, monkeypatch):
    import shutil

    import fake_tensorrt

    folder = tmp_path / "model"
    shutil.copytree(export, folder)
    stats = fake_tensorrt.install(monkeypatch)
    built = CliRunner().invoke(main, ["build", str(folder), "--static", "64x64", "--max-batch", "1"])
    assert built.exit_code == 0, built.output
    settings = dict(prompt=PROMPT, steps=5, seed=3, sampler="euler", deepcache=DeepCache(2))
    expected = Pipeline.load(folder).generate(**settings).array
    got = Pipeline.load(folder, backend="tensorrt").generate(**settings).array
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert stats.executions["unet"] == 3 and stats.executions["unet_shallow"] == 2


@pytest.mark.slow
def test_sdxl_deepcache_equals_the_deepcache_package(tiny_sdxl, tmp_path):
    """SDXL: the shallow graph adds the pooled text and size conditioning as the UNet does; its last
    up block has no attention, so the graph takes no text context."""
    import diffusers
    from DeepCache import DeepCacheSDHelper

    from sdrt.export.exporter import ExportOptions, export_model

    folder = tmp_path / "sdxl"
    manifest = export_model(
        str(tiny_sdxl["base"]), folder, options=ExportOptions(deepcache=True), progress=lambda line: None
    )
    assert "encoder_hidden_states" not in {t.name for t in manifest.components["unet_shallow"].inputs}
    reference = diffusers_pipeline("StableDiffusionXLPipeline", tiny_sdxl["base"])
    reference.scheduler = diffusers.EulerDiscreteScheduler.from_config(reference.scheduler.config)
    helper = DeepCacheSDHelper(pipe=reference)
    helper.set_params(cache_interval=3, cache_branch_id=0)
    helper.enable()
    expected = reference(
        PROMPT,
        num_inference_steps=6,
        guidance_scale=7.5,
        output_type="np",
        generator=torch.Generator("cpu").manual_seed(2),
    ).images
    helper.disable()
    got = Pipeline.load(folder).generate(PROMPT, steps=6, seed=2, sampler="euler", deepcache=DeepCache(3))
    assert_same_image(got.array, expected)
