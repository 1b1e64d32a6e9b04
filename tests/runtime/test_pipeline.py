"""Text-to-image on the exported tiny models against diffusers' StableDiffusionPipeline (LMS)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import LMSDiscreteScheduler, StableDiffusionPipeline

from conftest import diffusers_pipeline, reference_scheduler
from sdrt.errors import SdrtError
from sdrt.runtime.pipeline import Pipeline
from sdrt.runtime.schedulers import SAMPLER_NAMES

MAX_PIXEL_ERROR = 2 / 255
MEAN_PIXEL_ERROR = 0.5 / 255
NO_HEAVY_IMPORTS = Path(__file__).parent.parent / "no_heavy_imports.py"


@pytest.fixture(scope="module")
def exported_standard(exported_tiny) -> Path:
    return exported_tiny("standard")


@pytest.fixture(scope="module")
def exported_v_prediction(exported_tiny) -> Path:
    return exported_tiny("v_prediction")


@pytest.fixture(scope="module")
def ours(exported_standard) -> Pipeline:
    return Pipeline.load(exported_standard)


@pytest.fixture(scope="module")
def reference(tiny_models) -> StableDiffusionPipeline:
    return reference_pipeline(tiny_models["standard"])


def reference_pipeline(folder: Path) -> StableDiffusionPipeline:
    pipeline = diffusers_pipeline("StableDiffusionPipeline", folder)
    pipeline.scheduler = LMSDiscreteScheduler.from_config(pipeline.scheduler.config)
    return pipeline


def assert_same_image(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    difference = np.abs(got - expected)
    assert difference.max() <= MAX_PIXEL_ERROR, f"max {difference.max() * 255:.3f}/255"
    assert difference.mean() <= MEAN_PIXEL_ERROR, f"mean {difference.mean() * 255:.3f}/255"
    assert expected.std() > 0.01, "a blank reference image would make the comparison vacuous"


CASES = {
    "plain": dict(prompt="a photo of a cat", steps=2),
    "negative_prompt": dict(prompt="a photo of a cat", negative_prompt="blurry, low quality", steps=2),
    "no_guidance": dict(prompt="a photo of a cat", guidance_scale=1.0, steps=2),
    "batch_of_two_prompts": dict(prompt=["a photo of a cat", "an astronaut riding a horse"], steps=2),
    "non_square": dict(prompt="a red fox in the snow", height=64, width=96, steps=2),
    "one_step": dict(prompt="a photo of a cat", steps=1),
    "twenty_steps": dict(prompt="a photo of a cat", steps=20),
    "two_per_prompt": dict(prompt="a photo of a cat", num_images=2, steps=2),
}


#: The 20-step loop once by default (from a seed); given latents over 20 steps is the slow tier's.
SLOW_IMAGE_CASES = {("given_latents", "twenty_steps")}


@pytest.mark.parametrize(
    "latent_source, case",
    [
        pytest.param(source, case, marks=pytest.mark.slow if (source, case) in SLOW_IMAGE_CASES else ())
        for source in ("seed", "given_latents")
        for case in CASES
    ],
)
def test_image_equals_diffusers(ours, reference, case, latent_source):
    settings = dict(CASES[case])
    prompt, steps = settings.pop("prompt"), settings.pop("steps")
    guidance = settings.get("guidance_scale", 7.5)
    num_images = settings.get("num_images", 1)
    m = ours.manifest
    batch = (len(prompt) if isinstance(prompt, list) else 1) * num_images
    height, width = settings.get("height", m.native_height), settings.get("width", m.native_width)
    shape = (batch, m.latent_channels, height // m.vae_scale_factor, width // m.vae_scale_factor)
    reference_kwargs = dict(
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=height,
        width=width,
        negative_prompt=settings.get("negative_prompt"),
        num_images_per_prompt=num_images,
        output_type="np",
    )
    if latent_source == "seed":
        result = ours.generate(prompt, steps=steps, seed=1234, **settings)
        expected = reference(prompt, generator=torch.Generator("cpu").manual_seed(1234), **reference_kwargs).images
    else:
        latents = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
        result = ours.generate(prompt, steps=steps, latents=latents, **settings)
        expected = reference(prompt, latents=torch.from_numpy(latents), **reference_kwargs).images
    assert_same_image(result.array, expected)
    assert len(result.images) == batch and result.images[0].size == (width, height)
    assert np.array_equal(np.asarray(result.images[0]), (result.array[0] * 255).round().astype(np.uint8))


def test_v_prediction_model_equals_diffusers(tiny_models, exported_v_prediction):
    ours = Pipeline.load(exported_v_prediction)
    assert ours.manifest.prediction_type == "v_prediction"
    result = ours.generate("a photo of a cat", steps=3, seed=5, negative_prompt="ugly!!!")
    expected = reference_pipeline(tiny_models["v_prediction"])(
        "a photo of a cat",
        negative_prompt="ugly!!!",
        num_inference_steps=3,
        generator=torch.Generator("cpu").manual_seed(5),
        output_type="np",
    ).images
    assert_same_image(result.array, expected)


@pytest.mark.parametrize("sampler", ["lms", "euler_a"])
def test_one_seed_per_prompt_equals_diffusers_generator_list(ours, tiny_models, sampler):
    prompts, seeds = ["a photo of a cat", "an astronaut riding a horse"], [5, 9]
    reference = reference_pipeline(tiny_models["standard"])
    file_config = json.loads((tiny_models["standard"] / "scheduler" / "scheduler_config.json").read_text())
    reference.scheduler = reference_scheduler(sampler, file_config)
    result = ours.generate(prompts, steps=3, seed=seeds, sampler=sampler)
    expected = reference(
        prompts,
        num_inference_steps=3,
        output_type="np",
        generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds],
    ).images
    assert_same_image(result.array, expected)
    assert result.parameters["seed"] == seeds


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "euler_a", "ddpm"])
def test_a_prompt_in_a_batch_equals_that_prompt_alone(ours, sampler):
    """What lets a server batch requests: each prompt's images depend only on its own seed."""
    prompts, seeds = ["a photo of a cat", "a red fox in the snow", "a cat"], [3, 1000, 3]
    batched = ours.generate(
        prompts, negative_prompt=["", "blurry", "dark"], steps=4, seed=seeds, num_images=2, sampler=sampler
    )
    for index, (prompt, negative, seed) in enumerate(zip(prompts, ["", "blurry", "dark"], seeds)):
        alone = ours.generate(prompt, negative_prompt=negative, steps=4, seed=seed, num_images=2, sampler=sampler)
        np.testing.assert_allclose(batched.array[2 * index : 2 * index + 2], alone.array, atol=1e-5)
    # Same seed, different prompts: different images (the comparison above is not vacuous).
    assert np.abs(batched.array[0] - batched.array[4]).max() > 0.05


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(seed=[1]), "seed has 1 entries for 2 prompts"),
        (dict(seed=[1, -2]), "seed must be an integer"),
        (dict(seed=[1, 2], init_image="x.png"), "one seed per prompt works for text-to-image only"),
    ],
)
def test_per_prompt_seed_errors(ours, settings, message, tmp_path):
    from PIL import Image

    if "init_image" in settings:
        settings["init_image"] = tmp_path / "x.png"
        Image.new("RGB", (64, 64), "gray").save(settings["init_image"])
    with pytest.raises(SdrtError, match=message):
        ours.generate(["a", "b"], steps=1, **settings)


def test_no_seed_picks_one_and_reports_it(ours):
    first = ours.generate("a cat", steps=1)
    again = ours.generate("a cat", steps=1, seed=first.parameters["seed"])
    assert 0 <= first.parameters["seed"] < 2**32
    np.testing.assert_array_equal(first.array, again.array)


def test_threads_share_one_pipeline(ours):
    seeds = [11, 22, 33, 44]
    serial = {seed: ours.generate("a cat", steps=3, seed=seed).array for seed in seeds}
    concurrent: dict[int, np.ndarray] = {}

    def work(seed: int) -> None:
        concurrent[seed] = ours.generate("a cat", steps=3, seed=seed).array

    threads = [threading.Thread(target=work, args=(seed,)) for seed in seeds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for seed in seeds:
        np.testing.assert_array_equal(concurrent[seed], serial[seed])


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(height=70), "height 70 is not a multiple of 16, which this model needs: use 64 or 80"),
        (dict(width=8), "width 8 is not a multiple of 16"),
        (dict(steps=0), "steps must be an integer from 1 to 10000"),
        (dict(guidance_scale=-1.0), "guidance scale must be >= 0"),
        (dict(num_images=0), "num_images must be a positive integer"),
        (dict(num_images=9), "9 images at once exceed this export's batch limit of 8"),
        (dict(seed=-1), "seed must be an integer"),
        (dict(sampler="nope"), "unknown sampler 'nope'"),
        (dict(latents=np.zeros((1, 4, 4, 4), np.float32)), "latents must have shape"),
        (dict(prompt=["a", 3]), "prompt must be a string or a non-empty list"),
    ],
)
def test_bad_requests_are_clear_errors(ours, settings, message):
    prompt = settings.pop("prompt", "a cat")
    with pytest.raises(SdrtError, match=message.replace("(", r"\(")):
        ours.generate(prompt, **dict(dict(steps=1), **settings))


def test_folder_without_manifest_runs_like_with_it(ours, exported_standard, tmp_path):
    import shutil

    copy = tmp_path / "no-manifest"
    shutil.copytree(exported_standard, copy)
    (copy / "manifest.json").unlink()
    inferred = Pipeline.load(copy)
    assert inferred.manifest.text_length == 77 and inferred.manifest.latent_channels == 4
    a = inferred.generate("a cat", steps=2, seed=3, height=64, width=64).array
    b = ours.generate("a cat", steps=2, seed=3, height=64, width=64).array
    np.testing.assert_array_equal(a, b)


def test_generation_needs_no_torch(exported_standard, tmp_path):
    code = (
        "from sdrt.runtime.pipeline import Pipeline\n"
        f"result = Pipeline.load({str(exported_standard)!r}).generate('a photo of a cat', steps=2, seed=9)\n"
        f"result.images[0].save({str(tmp_path / 'out.png')!r})\n"
    )
    completed = subprocess.run([sys.executable, str(NO_HEAVY_IMPORTS), code], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    assert (tmp_path / "out.png").stat().st_size > 0


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_every_sampler_end_to_end_equals_diffusers(ours, tiny_models, sampler):
    reference = reference_pipeline(tiny_models["standard"])
    # From the folder's file: a config that passed through another scheduler lists keys in
    # `_use_default_values`, and diffusers then drops overrides of those keys (Karras here).
    file_config = json.loads((tiny_models["standard"] / "scheduler" / "scheduler_config.json").read_text())
    reference.scheduler = reference_scheduler(sampler, file_config)
    assert reference.scheduler.config.get("use_karras_sigmas", False) == ("karras" in sampler)
    result = ours.generate("a photo of a cat", steps=6, seed=21, sampler=sampler, negative_prompt="blurry")
    expected = reference(
        "a photo of a cat",
        negative_prompt="blurry",
        num_inference_steps=6,
        output_type="np",
        generator=torch.Generator("cpu").manual_seed(21),
    ).images
    assert_same_image(result.array, expected)


def test_nan_from_the_vae_is_a_clear_error(exported_standard):
    from sdrt.runtime.engines.base import Engine

    pipeline = Pipeline.load(exported_standard)

    class NanDecoder(Engine):
        def _run(self, feeds, dims):
            latents = feeds["latent_sample"]
            return {"sample": np.full((latents.shape[0], 3, 64, 64), np.nan, np.float32)}

    real = pipeline.engines["vae_decoder"]
    pipeline.engines["vae_decoder"] = NanDecoder("vae_decoder", real.spec, real.dims)
    with pytest.raises(SdrtError, match="the VAE decoded NaN .* re-export with --vae-precision fp32"):
        pipeline.generate("a cat", steps=1, seed=0)


@pytest.mark.parametrize("height, width", [(500, 500), (8, 70), (70, 4096), (4096, 200)])
def test_size_errors_name_every_wrong_side_and_suggest_only_valid_sizes(ours, height, width):
    dims = ours.manifest.dims
    with pytest.raises(SdrtError) as raised:
        ours.generate("a cat", steps=1, height=height, width=width)
    message = str(raised.value)
    assert "\n" not in message
    parts = dict(zip(("height", "width"), message.split("; "))) if "; " in message else {}
    for name, value in (("height", height), ("width", width)):
        if dims[name].contains(value):
            assert f"{name} {value}" not in message
            continue
        part = parts.get(name, message)
        assert part.startswith(f"{name} {value} ")
        suggested = [int(n) for n in re.findall(r"\d+", part.split("use ")[-1] if "use " in part else part.split()[-1])]
        assert suggested and all(dims[name].contains(size) for size in suggested), part
