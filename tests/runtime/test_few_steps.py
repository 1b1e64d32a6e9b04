"""Few-step use (issue 18, first part): SD-Turbo-style runs (trailing timesteps, guidance 0,
1 to 4 steps: one UNet batch, no unconditional half), LCM sampling, and LCM-distilled UNets
(guidance as an embedding), against diffusers."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, LCMScheduler

from conftest import diffusers_pipeline
from sdrt.runtime.pipeline import Pipeline
from sdrt.runtime.request import GenerationRequest

MAX_PIXEL_ERROR = 2 / 255
MEAN_PIXEL_ERROR = 0.5 / 255
PROMPT = "a photo of a cat"


def assert_same_image(got: np.ndarray, expected: np.ndarray) -> None:
    difference = np.abs(got - expected)
    assert difference.max() <= MAX_PIXEL_ERROR and difference.mean() <= MEAN_PIXEL_ERROR, difference.max() * 255
    assert expected.std() > 0.01


@pytest.fixture(scope="module")
def turbo(exported_tiny, tmp_path_factory):
    """The tiny model with SD-Turbo's scheduler settings (Euler, trailing timesteps)."""
    folder = tmp_path_factory.mktemp("turbo") / "model"
    shutil.copytree(exported_tiny("standard"), folder)
    path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text())
    config.update({"_class_name": "EulerDiscreteScheduler", "timestep_spacing": "trailing"})
    path.write_text(json.dumps(config))
    return folder, config


def unet_batches(pipeline: Pipeline) -> list[int]:
    """Records the batch of every UNet call."""
    engine, seen = pipeline.engines["unet"], []
    original = engine.run

    def run(feeds):
        seen.append(feeds["sample"].shape[0])
        return original(feeds)

    engine.run = run
    return seen


@pytest.mark.parametrize("steps", [1, 4])
def test_turbo_style_runs_equal_diffusers_with_one_unet_batch(turbo, tiny_models, steps):
    folder, config = turbo
    reference = diffusers_pipeline("StableDiffusionPipeline", tiny_models["standard"])
    reference.scheduler = EulerDiscreteScheduler.from_config(config)
    generator = torch.Generator("cpu").manual_seed(11)
    expected = reference(
        PROMPT, num_inference_steps=steps, guidance_scale=0.0, generator=generator, output_type="np"
    ).images
    ours = Pipeline.load(folder)
    batches = unet_batches(ours)
    got = ours.generate(PROMPT, steps=steps, seed=11, guidance_scale=0.0, sampler="euler")
    assert_same_image(got.array, expected)
    assert batches == [1] * steps  # guidance 0 (or 1): no unconditional half
    assert ours.new_sampler(GenerationRequest(PROMPT, steps=steps, sampler="euler")).timesteps[0] == 999  # trailing


@pytest.mark.parametrize("steps, guidance", [(1, 1.0), (4, 1.5)])
def test_lcm_sampling_equals_diffusers(exported_tiny, tiny_models, steps, guidance):
    reference = diffusers_pipeline("StableDiffusionPipeline", tiny_models["standard"])
    reference.scheduler = LCMScheduler.from_config(reference.scheduler.config)
    generator = torch.Generator("cpu").manual_seed(5)
    expected = reference(
        PROMPT, num_inference_steps=steps, guidance_scale=guidance, generator=generator, output_type="np"
    ).images
    ours = Pipeline.load(exported_tiny("standard"))
    batches = unet_batches(ours)
    got = ours.generate(PROMPT, steps=steps, seed=5, guidance_scale=guidance, sampler="lcm")
    assert_same_image(got.array, expected)
    assert batches == [1 if guidance <= 1 else 2] * steps


@pytest.mark.parametrize("steps, guidance", [(1, 8.5), (4, 8.5)])
def test_lcm_distilled_unet_equals_latent_consistency_pipeline(exported_tiny, tiny_models, steps, guidance):
    """A UNet with `time_cond_proj_dim` takes the guidance as an embedding: one batch, no
    negative prompt, as diffusers' LatentConsistencyModelPipeline runs it."""
    reference = diffusers_pipeline("LatentConsistencyModelPipeline", tiny_models["lcm"])
    reference.scheduler = LCMScheduler.from_config(reference.scheduler.config)
    generator = torch.Generator("cpu").manual_seed(9)
    expected = reference(
        PROMPT, num_inference_steps=steps, guidance_scale=guidance, generator=generator, output_type="np"
    ).images
    folder = exported_tiny("lcm")
    manifest = json.loads((folder / "manifest.json").read_text())
    unet_inputs = {t["name"]: t["shape"] for t in manifest["components"]["unet"]["inputs"]}
    assert unet_inputs["timestep_cond"] == ["unet_batch", 32]
    ours = Pipeline.load(folder)
    batches = unet_batches(ours)
    got = ours.generate(PROMPT, steps=steps, seed=9, guidance_scale=guidance, sampler="lcm")
    assert_same_image(got.array, expected)
    assert batches == [1] * steps
    other = ours.generate(PROMPT, steps=steps, seed=9, guidance_scale=guidance + 4, sampler="lcm")
    assert np.abs(other.array - got.array).max() > 2 * MAX_PIXEL_ERROR  # the embedding carries the guidance
    warned = ours.generate(PROMPT, negative_prompt="blurry", steps=1, seed=9, sampler="lcm")
    assert warned.warnings == [
        "this latent consistency model takes no negative prompt (guidance is built in): it was not used"
    ]


@pytest.mark.parametrize("steps, eta", [(4, None), (4, 0.3), (2, 1.0)])
def test_tcd_sampling_equals_diffusers(exported_tiny, tiny_models, steps, eta):
    """TCD (TCD-LoRA's sampler): diffusers' TCDScheduler with the pipeline's eta as its gamma
    (without one, diffusers' pipelines pass eta=0.0, and so does sdrt)."""
    from click.testing import CliRunner
    from diffusers import TCDScheduler

    from sdrt.cli import main

    reference = diffusers_pipeline("StableDiffusionPipeline", tiny_models["standard"])
    reference.scheduler = TCDScheduler.from_config(reference.scheduler.config)
    expected = reference(
        PROMPT,
        num_inference_steps=steps,
        guidance_scale=1.5,
        eta=0.0 if eta is None else eta,
        generator=torch.Generator("cpu").manual_seed(6),
        output_type="np",
    ).images
    ours = Pipeline.load(exported_tiny("standard"))
    got = ours.generate(PROMPT, steps=steps, seed=6, guidance_scale=1.5, sampler="tcd", eta=eta)
    assert_same_image(got.array, expected)
    if eta is None:
        refused = CliRunner().invoke(
            main,
            [
                "generate",
                PROMPT,
                "--model",
                str(exported_tiny("standard")),
                "--sampler",
                "euler",
                "--eta",
                "0.5",
                "--steps",
                "1",
                "--quiet",
            ],
        )
        assert refused.exit_code == 2 and "eta" in refused.output and "Traceback" not in refused.output


def test_consistency_sampler_with_guidance_on_a_plain_unet_warns(exported_tiny):
    ours = Pipeline.load(exported_tiny("standard"))
    warned = ours.generate(PROMPT, steps=2, seed=1, sampler="lcm", guidance_scale=7.5).warnings
    assert any("not consistency-distilled runs classifier-free guidance at 7.5" in w for w in warned)
    assert not ours.generate(PROMPT, steps=2, seed=1, sampler="lcm", guidance_scale=1.5).warnings
