"""SDXL base, refiner and inpainting against diffusers' SDXL pipelines on tiny random models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import reference_scheduler, sdxl_reference
from sdrt.errors import GenerationError, ModelFolderError
from sdrt.runtime.families.sdxl import SizeConditioning
from sdrt.runtime.pipeline import Pipeline

MAX_PIXEL_ERROR = 2 / 255
MEAN_PIXEL_ERROR = 0.5 / 255
PROMPT = "a photo of a cat"
NO_HEAVY_IMPORTS = Path(__file__).parent.parent / "no_heavy_imports.py"


@pytest.fixture(scope="module")
def base(exported_sdxl) -> Pipeline:
    return Pipeline.load(exported_sdxl("base"))


@pytest.fixture(scope="module")
def text_to_image(tiny_sdxl):
    return sdxl_reference("StableDiffusionXLPipeline", tiny_sdxl["base"])


def use_sampler(reference, folder: Path, sampler: str) -> None:
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    reference.scheduler = reference_scheduler(sampler, config)


def assert_same_image(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    error = np.abs(got - expected)
    assert error.max() <= MAX_PIXEL_ERROR and error.mean() <= MEAN_PIXEL_ERROR, (error.max(), error.mean())


def photo(width=96, height=64) -> Image.Image:
    gradient = np.linspace(0, 255, width)[np.newaxis, :, np.newaxis] * np.ones((height, 1, 3))
    noise = np.random.default_rng(0).random((height, width, 3)) * 60
    return Image.fromarray(np.clip(gradient * 0.7 + noise, 0, 255).astype(np.uint8))


def box_mask(width=96, height=64) -> Image.Image:
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4 : 3 * height // 4, width // 3 : 2 * width // 3] = 255
    return Image.fromarray(mask)


@pytest.mark.parametrize("negative", [None, "", "blurry, low quality"])
@pytest.mark.parametrize("guidance", [1.0, 5.0])
def test_text_to_image_equals_diffusers(base, text_to_image, tiny_sdxl, negative, guidance):
    use_sampler(text_to_image, tiny_sdxl["base"], "euler")
    result = base.generate(PROMPT, negative_prompt=negative, guidance_scale=guidance, steps=6, seed=3, sampler="euler")
    expected = text_to_image(
        PROMPT,
        negative_prompt=negative,
        guidance_scale=guidance,
        num_inference_steps=6,
        output_type="np",
        generator=torch.Generator().manual_seed(3),
    ).images
    assert_same_image(result.array, expected)


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "euler_a"])
def test_non_square_batches_and_samplers_equal_diffusers(base, text_to_image, tiny_sdxl, sampler):
    use_sampler(text_to_image, tiny_sdxl["base"], sampler)
    prompts = [PROMPT, "a watercolor fox"]
    result = base.generate(
        prompts,
        negative_prompt=["blurry", "dark"],
        guidance_scale=5.0,
        steps=5,
        seed=7,
        sampler=sampler,
        height=96,
        width=160,
        num_images=2,
    )
    expected = text_to_image(
        prompts,
        negative_prompt=["blurry", "dark"],
        guidance_scale=5.0,
        num_inference_steps=5,
        height=96,
        width=160,
        num_images_per_prompt=2,
        output_type="np",
        generator=torch.Generator().manual_seed(7),
    ).images
    assert result.array.shape == (4, 96, 160, 3)
    assert_same_image(result.array, expected)


def test_size_conditioning_equals_diffusers(base, text_to_image, tiny_sdxl):
    use_sampler(text_to_image, tiny_sdxl["base"], "euler")
    sizes = dict(original_size=(512, 768), crop_top_left=(16, 32), target_size=(1024, 1024))
    negative = dict(negative_original_size=(256, 256), negative_target_size=(640, 512))
    conditioning = SizeConditioning(**sizes, **negative, negative_crop_top_left=(0, 0))
    result = base.generate(PROMPT, guidance_scale=5.0, steps=4, seed=1, sampler="euler", size_conditioning=conditioning)
    expected = text_to_image(
        PROMPT,
        guidance_scale=5.0,
        num_inference_steps=4,
        output_type="np",
        crops_coords_top_left=sizes["crop_top_left"],
        original_size=sizes["original_size"],
        target_size=sizes["target_size"],
        **negative,
        generator=torch.Generator().manual_seed(1),
    ).images
    assert_same_image(result.array, expected)
    plain = base.generate(PROMPT, guidance_scale=5.0, steps=4, seed=1, sampler="euler").array
    assert np.abs(plain - result.array).max() > 10 * MAX_PIXEL_ERROR  # the conditioning is used


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
def test_image_to_image_equals_diffusers(base, tiny_sdxl, sampler):
    reference = sdxl_reference("StableDiffusionXLImg2ImgPipeline", tiny_sdxl["base"])
    use_sampler(reference, tiny_sdxl["base"], sampler)
    result = base.generate(
        PROMPT,
        init_image=photo(),
        strength=0.6,
        guidance_scale=5.0,
        steps=8,
        seed=4,
        sampler=sampler,
        negative_prompt="blurry",
    )
    expected = reference(
        PROMPT,
        image=photo(),
        strength=0.6,
        guidance_scale=5.0,
        num_inference_steps=8,
        negative_prompt="blurry",
        output_type="np",
        generator=torch.Generator().manual_seed(4),
    ).images
    assert result.array.shape == (1, 64, 96, 3)
    assert_same_image(result.array, expected)


@pytest.mark.parametrize("kind,strength", [("base", 0.75), ("inpaint", 1.0), ("inpaint", 0.7)])
def test_inpainting_equals_diffusers(exported_sdxl, tiny_sdxl, kind, strength):
    ours = Pipeline.load(exported_sdxl(kind))
    reference = sdxl_reference("StableDiffusionXLInpaintPipeline", tiny_sdxl[kind])
    use_sampler(reference, tiny_sdxl[kind], "euler")
    result = ours.generate(
        PROMPT,
        init_image=photo(),
        mask_image=box_mask(),
        strength=strength,
        guidance_scale=5.0,
        steps=6,
        seed=5,
        sampler="euler",
    )
    expected = reference(
        PROMPT,
        image=photo(),
        mask_image=box_mask(),
        strength=strength,
        guidance_scale=5.0,
        num_inference_steps=6,
        height=64,
        width=96,
        output_type="np",
        generator=torch.Generator().manual_seed(5),
    ).images
    assert_same_image(result.array, expected)


@pytest.fixture(scope="module")
def with_refiner(exported_sdxl) -> Pipeline:
    return Pipeline.load(exported_sdxl("base"), refiner=exported_sdxl("refiner"))


def ensemble(tiny_sdxl, sampler, switch, steps, seed, image=None, strength=0.3, **common):
    """diffusers' ensemble of experts: the base to `switch` as latents, the refiner from there,
    one generator through both."""
    first = sdxl_reference(
        "StableDiffusionXLImg2ImgPipeline" if image else "StableDiffusionXLPipeline", tiny_sdxl["base"]
    )
    refiner = sdxl_reference("StableDiffusionXLImg2ImgPipeline", tiny_sdxl["refiner"])
    use_sampler(first, tiny_sdxl["base"], sampler)
    use_sampler(refiner, tiny_sdxl["refiner"], sampler)
    generator = torch.Generator().manual_seed(seed)
    extra = {} if image is None else {"image": image, "strength": strength}
    latents = first(
        PROMPT,
        num_inference_steps=steps,
        denoising_end=switch,
        output_type="latent",
        generator=generator,
        **extra,
        **common,
    ).images
    return refiner(
        PROMPT,
        image=latents,
        num_inference_steps=steps,
        denoising_start=switch,
        output_type="np",
        generator=generator,
        **common,
    ).images


@pytest.mark.parametrize(
    "sampler,switch",
    [
        ("euler", 0.8),
        *(pytest.param(*case, marks=pytest.mark.slow) for case in (("euler_a", 0.8), ("dpmpp_2m", 0.5))),
        ("heun", 0.7),
    ],
)
def test_base_and_refiner_equal_diffusers_ensemble(with_refiner, tiny_sdxl, sampler, switch):
    result = with_refiner.generate(
        PROMPT, guidance_scale=5.0, steps=10, seed=11, sampler=sampler, refiner_switch=switch
    )
    expected = ensemble(tiny_sdxl, sampler, switch, steps=10, seed=11, guidance_scale=5.0)
    assert_same_image(result.array, expected)
    assert result.parameters["refiner_switch"] == switch
    alone = with_refiner.generate(PROMPT, guidance_scale=5.0, steps=10, seed=11, sampler=sampler).array
    assert np.abs(alone - result.array).max() > 10 * MAX_PIXEL_ERROR  # the refiner ran


def test_image_to_image_with_refiner_equals_diffusers(with_refiner, tiny_sdxl):
    result = with_refiner.generate(
        PROMPT,
        init_image=photo(),
        strength=0.9,
        guidance_scale=5.0,
        steps=10,
        seed=2,
        sampler="euler",
        refiner_switch=0.8,
    )
    expected = ensemble(tiny_sdxl, "euler", 0.8, steps=10, seed=2, image=photo(), strength=0.9, guidance_scale=5.0)
    assert_same_image(result.array, expected)


def test_refiner_alone_refines_an_image(exported_sdxl, tiny_sdxl):
    ours = Pipeline.load(exported_sdxl("refiner"))
    reference = sdxl_reference("StableDiffusionXLImg2ImgPipeline", tiny_sdxl["refiner"])
    use_sampler(reference, tiny_sdxl["refiner"], "euler")
    result = ours.generate(
        PROMPT,
        init_image=photo(),
        strength=0.3,
        guidance_scale=5.0,
        steps=10,
        seed=6,
        sampler="euler",
        negative_prompt=None,
    )
    expected = reference(
        PROMPT,
        image=photo(),
        strength=0.3,
        guidance_scale=5.0,
        num_inference_steps=10,
        output_type="np",
        generator=torch.Generator().manual_seed(6),
    ).images
    assert_same_image(result.array, expected)


def test_generation_with_refiner_imports_no_torch(exported_sdxl):
    code = (
        "from sdrt.runtime.pipeline import Pipeline\n"
        f"p = Pipeline.load({str(exported_sdxl('base'))!r}, refiner={str(exported_sdxl('refiner'))!r})\n"
        "r = p.generate('a cat', steps=4, seed=1, refiner_switch=0.5)\n"
        "r2 = p.generate('a cat', steps=3, seed=1, init_image=r.images[0], mask_image=r.images[0].convert('L'))\n"
        "print(r.array.shape, r2.array.shape)\n"
    )
    done = subprocess.run([sys.executable, str(NO_HEAVY_IMPORTS), code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "(1, 128, 128, 3) (1, 128, 128, 3)" in done.stdout


def test_manifest_records_what_the_runtime_reads(exported_sdxl):
    base = json.loads((exported_sdxl("base") / "manifest.json").read_text())
    refiner = json.loads((exported_sdxl("refiner") / "manifest.json").read_text())
    assert base["family"] == "sdxl" and refiner["family"] == "sdxl-refiner"
    assert base["sdxl"] == {
        "text_encoders": ["text_encoder", "text_encoder_2"],
        "tokenizers": ["tokenizer", "tokenizer_2"],
        "force_zeros_for_empty_prompt": True,
        "requires_aesthetics_score": False,
        "vae_force_upcast": True,
    }
    assert refiner["sdxl"]["text_encoders"] == ["text_encoder_2"] and refiner["sdxl"]["requires_aesthetics_score"]
    assert not refiner["sdxl"]["force_zeros_for_empty_prompt"]
    unet = {t["name"]: t["shape"] for t in base["components"]["unet"]["inputs"]}
    assert unet["time_ids"] == ["unet_batch", 6] and unet["text_embeds"] == ["unet_batch", 40]
    assert unet["encoder_hidden_states"] == ["unet_batch", "text_sequence", 32 + 48]
    assert base["dims"]["text_sequence"] == {"min": 77, "opt": 77, "max": 77 * 4, "multiple": 77}
    refiner_unet = {t["name"]: t["shape"] for t in refiner["components"]["unet"]["inputs"]}
    assert refiner_unet["time_ids"] == ["unet_batch", 5]


@pytest.mark.slow  # 14 s: a whole fp16 SDXL export for one flag
def test_fp16_export_keeps_the_sdxl_vae_in_fp32(tiny_sdxl, tmp_path):
    from sdrt.export.exporter import ExportOptions, export_model

    lines: list[str] = []
    manifest = export_model(
        str(tiny_sdxl["refiner"]),
        tmp_path / "fp16",
        options=ExportOptions(precision="fp16", vae_precision="fp16"),
        progress=lines.append,
    )
    assert manifest.components["unet"].precision == "fp16"
    assert manifest.components["vae_decoder"].precision == "fp32"
    assert any("force_upcast" in line for line in lines)


@pytest.mark.parametrize(
    "request_settings,param",
    [
        (dict(refiner_switch=0.8), "refiner_switch"),
        (dict(height=4096), "height"),
        (dict(size_conditioning=SizeConditioning(original_size=(0, 5))), "original_size"),
        (dict(size_conditioning=SizeConditioning(aesthetic_score=float("nan"))), "aesthetic_score"),
    ],
)
def test_bad_sdxl_requests_name_their_field(base, request_settings, param):
    with pytest.raises(GenerationError) as caught:
        base.generate(PROMPT, steps=2, **request_settings)
    assert caught.value.param == param and "\n" not in str(caught.value)


def test_bad_pairs_are_refused(exported_sdxl, exported_tiny):
    with pytest.raises(GenerationError, match="SDXL refiner"):
        Pipeline.load(exported_sdxl("refiner")).generate(PROMPT, steps=2)
    with pytest.raises(ModelFolderError, match="needs an SDXL base"):
        Pipeline.load(exported_tiny("standard"), refiner=exported_sdxl("refiner"))
    with pytest.raises(GenerationError, match="SDXL models only"):
        Pipeline.load(exported_tiny("standard")).generate(PROMPT, steps=2, refiner_switch=0.5)
    with pytest.raises(GenerationError, match="inpainting with a refiner"):
        Pipeline.load(exported_sdxl("base"), refiner=exported_sdxl("refiner")).generate(
            PROMPT, steps=2, init_image=photo(), mask_image=box_mask(), refiner_switch=0.5
        )


# ---------------------------------------------------------------- TensorRT (strict fake), CLI and servers
def test_sdxl_builds_and_runs_through_tensorrt(exported_sdxl, tmp_path, monkeypatch):
    import shutil

    from click.testing import CliRunner

    import fake_tensorrt
    from sdrt.cli import main

    stats = fake_tensorrt.install(monkeypatch)
    folders = {}
    for kind in ("base", "refiner"):
        folders[kind] = tmp_path / kind
        shutil.copytree(exported_sdxl(kind), folders[kind])
        built = CliRunner().invoke(main, ["build", str(folders[kind]), "--static", "128x128", "--max-batch", "1"])
        assert built.exit_code == 0, built.output
    unet = next(b for b in stats.builds if b["onnx"].endswith("base/unet/model.onnx"))
    assert unet["profile"]["time_ids"] == [[1, 6], [2, 6], [2, 6]]
    assert unet["profile"]["text_embeds"] == [[1, 40], [2, 40], [2, 40]]
    encoders = [b for b in stats.builds if "/text_encoder_2/" in b["onnx"]]
    assert len(encoders) == 2  # base and refiner
    # Its textual-inversion rows are an engine input (TensorRT gets the graph without their default).
    assert all(b["profile"]["extra_token_embeddings"] == [[1, 48], [1, 48], [1024, 48]] for b in encoders)
    cpu = Pipeline.load(folders["base"], refiner=folders["refiner"])
    trt = Pipeline.load(folders["base"], backend="tensorrt", refiner=folders["refiner"])
    for settings in (dict(steps=4, seed=3), dict(steps=6, seed=1, refiner_switch=0.5, sampler="euler_a")):
        np.testing.assert_allclose(
            trt.generate(PROMPT, **settings).array, cpu.generate(PROMPT, **settings).array, atol=1e-5
        )
    # The base zeroes a missing negative (its config says so) and the refiner encodes "" instead:
    # the base's prompt in both runs, the refiner's prompt and negative in the second.
    assert stats.executions["text_encoder_2"] == 1 + 1 + 2


def test_generate_cli_with_refiner_and_size_conditioning(exported_sdxl, base, tmp_path):
    from click.testing import CliRunner

    from sdrt.cli import main
    from sdrt.runtime.imaging.png_info import read_parameters

    out = tmp_path / "x.png"
    arguments = [
        "generate",
        PROMPT,
        "--model",
        str(exported_sdxl("base")),
        "--steps",
        "6",
        "--seed",
        "9",
        "--sampler",
        "euler",
        "--refiner",
        str(exported_sdxl("refiner")),
        "--refiner-switch",
        "0.6",
        "--original-size",
        "512,768",
        "--crop-top-left",
        "0,16",
        "--out",
        str(out),
        "--quiet",
    ]
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 0, result.output
    with_refiner = Pipeline.load(exported_sdxl("base"), refiner=exported_sdxl("refiner"))
    expected = with_refiner.generate(
        PROMPT,
        steps=6,
        seed=9,
        sampler="euler",
        refiner_switch=0.6,
        size_conditioning=SizeConditioning(original_size=(512, 768), crop_top_left=(0, 16)),
    ).images[0]
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(expected))
    text = read_parameters(out)
    assert "Refiner: refiner, Refiner switch at: 0.6" in text


@pytest.mark.parametrize(
    "arguments,message",
    [
        (["--model", "{refiner}"], "SDXL refiner"),
        (["--model", "{sd15}", "--refiner", "{refiner}"], "needs an SDXL base"),
        (["--model", "{base}", "--height", "4096"], "outside this export's range 16..256"),
        (["--model", "{base}", "--refiner-switch", "0.5"], "--refiner-switch needs --refiner"),
        (["--model", "{base}", "--original-size", "12"], "expected two whole numbers"),
        (["--model", "{sd15}", "--original-size", "512,512"], "SDXL models only"),
    ],
)
def test_bad_sdxl_commands_are_one_line_errors(exported_sdxl, exported_tiny, tmp_path, arguments, message):
    from click.testing import CliRunner

    from sdrt.cli import main

    folders = {"refiner": exported_sdxl("refiner"), "base": exported_sdxl("base"), "sd15": exported_tiny("standard")}
    arguments = [argument.format(**folders) for argument in arguments]
    result = CliRunner().invoke(
        main, ["generate", PROMPT, "--steps", "2", "--out", str(tmp_path / "x.png"), *arguments]
    )
    assert result.exit_code != 0 and message in result.output, result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output


def test_a1111_refiner_fields_and_openai_route_serve_sdxl(exported_sdxl):
    import base64
    import io

    from fastapi.testclient import TestClient

    from sdrt.serve.app import ServeSettings, create_app

    pipeline = Pipeline.load(exported_sdxl("base"), refiner=exported_sdxl("refiner"))
    body = {
        "prompt": PROMPT,
        "steps": 6,
        "seed": 4,
        "sampler_name": "Euler",
        "cfg_scale": 5,
        "refiner_checkpoint": "refiner",
        "refiner_switch_at": 0.7,
    }
    with TestClient(create_app(pipeline, ServeSettings(randn_source="CPU"))) as client:
        answer = client.post("/sdapi/v1/txt2img", json=body)
        assert answer.status_code == 200, answer.text
        got = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0]))))
        expected = pipeline.generate(  # A1111's Euler: the k-diffusion family, switched mid-run
            PROMPT, steps=6, seed=4, sampler="k_euler", guidance_scale=5, refiner_switch=0.7
        ).images[0]
        assert np.array_equal(got, np.asarray(expected))
        assert json.loads(answer.json()["info"])["refiner_switch_at"] == 0.7
        unknown = client.post("/sdapi/v1/txt2img", json=dict(body, refiner_checkpoint="sd_xl_refiner_1.0"))
        assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "refiner_checkpoint"
        plain = client.post("/sdapi/v1/txt2img", json=dict(body, refiner_checkpoint="None"))
        assert plain.status_code == 200
        openai = client.post("/v1/images/generations", json={"prompt": PROMPT, "size": "128x128", "steps": 3})
        assert openai.status_code == 200 and openai.json()["data"][0]["b64_json"]


def test_batched_sdxl_requests_equal_their_runs_alone(base):
    from sdrt.runtime.request import GenerationRequest
    from sdrt.serve.batching import Job, batch_key, merged_request, split_result

    requests = [
        GenerationRequest(PROMPT, seed=1, steps=3, guidance_scale=5.0),
        GenerationRequest("a fox", seed=2, steps=3, guidance_scale=5.0),
    ]
    jobs = [Job(request, batch_key(request, 128, 128), None) for request in requests]
    assert jobs[0].key == jobs[1].key
    together = split_result(base.run(merged_request(jobs)), jobs)
    for request, result in zip(requests, together):
        np.testing.assert_allclose(result.array, base.run(request).array, atol=1e-6)
