"""One seed per image (`seeds`, A1111's seed + i), DDIM with eta and a cancelled run's partial
images (issue 34): each image of a batch equals the request for its seed alone, pixel for
pixel, and diffusers given one generator per image; DDIM's variance noise equals diffusers'
pipelines with that eta; a cancelled run decodes the latents of its last finished step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import diffusers_pipeline, reference_scheduler, sdxl_reference
from sdrt.errors import GenerationError
from sdrt.runtime.pipeline import Pipeline
from sdrt.runtime.seeds import consecutive_seeds

MAX_PIXEL_ERROR = 2 / 255
MEAN_PIXEL_ERROR = 0.5 / 255
PROMPT = "a photo of a cat"


def assert_same_image(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    error = np.abs(got - expected)
    assert error.max() <= MAX_PIXEL_ERROR and error.mean() <= MEAN_PIXEL_ERROR, (error.max(), error.mean())
    assert expected.std() > 0.01


@pytest.fixture(scope="module")
def tiny(exported_tiny) -> Pipeline:
    return Pipeline.load(exported_tiny("standard"))


def test_consecutive_seeds_wrap_as_torch_reads_them():
    assert consecutive_seeds(7, 3) == [7, 8, 9]
    assert consecutive_seeds(2**32 - 1, 2) == [2**32 - 1, 0]


@pytest.mark.parametrize("sampler, eta", [("euler_a", None), ("ddim", 1.0), ("lms", None)])
def test_each_image_equals_its_seed_alone(tiny, sampler, eta):
    """The batch's images and their step noise come from their own generators."""
    prompts = [PROMPT, "a watercolor fox"]
    batch = tiny.generate(prompts, steps=3, seeds=[7, 8, 20, 21], num_images=2, sampler=sampler, eta=eta)
    assert batch.parameters["seeds"] == [7, 8, 20, 21] and batch.parameters["seed"] == 7
    for index, seed in enumerate([7, 8, 20, 21]):
        alone = tiny.generate(prompts[index // 2], steps=3, seed=seed, sampler=sampler, eta=eta)
        np.testing.assert_array_equal(np.asarray(batch.images[index]), np.asarray(alone.images[0]))
        np.testing.assert_allclose(batch.array[index], alone.array[0], atol=1e-5)
    # `seed` with several images: one generator draws them all (diffusers' num_images_per_prompt).
    shared = tiny.generate(PROMPT, steps=3, seed=7, num_images=2, sampler=sampler, eta=eta)
    assert np.abs(shared.array[1] - batch.array[1]).max() > MAX_PIXEL_ERROR


def test_image_to_image_with_seeds_equals_each_alone(tiny):
    photo = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    batch = tiny.generate(PROMPT, steps=4, seeds=[3, 4], num_images=2, init_image=photo, strength=0.6)
    assert batch.parameters["seeds"] == [3, 4] and len(batch.images) == 2
    for index, seed in enumerate([3, 4]):
        alone = tiny.generate(PROMPT, steps=4, seed=seed, init_image=photo, strength=0.6)
        np.testing.assert_array_equal(np.asarray(batch.images[index]), np.asarray(alone.images[0]))


@pytest.mark.parametrize(
    "settings, words",
    [
        ({"seeds": [1]}, "1 seeds for 2 images"),
        ({"seeds": [1, 2], "seed": 3}, "not both"),
        ({"seeds": [1, -2]}, "from 0 to"),
        ({"seeds": 5}, "one seed per image"),
    ],
)
def test_bad_seeds_name_the_field(tiny, settings, words):
    with pytest.raises(GenerationError) as error:
        tiny.generate(PROMPT, steps=1, num_images=2, **settings)
    assert error.value.param == "seeds" and words in str(error.value)


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_ddim_with_eta_equals_diffusers_with_a_generator_per_image(tiny, tiny_models, eta):
    reference = diffusers_pipeline("StableDiffusionPipeline", tiny_models["standard"])
    reference.scheduler = reference_scheduler("ddim", dict(reference.scheduler.config))
    expected = reference(
        PROMPT,
        num_inference_steps=5,
        num_images_per_prompt=2,
        eta=eta,
        generator=[torch.Generator("cpu").manual_seed(seed) for seed in (7, 8)],
        output_type="np",
    ).images
    got = tiny.generate(PROMPT, steps=5, seeds=[7, 8], num_images=2, sampler="ddim", eta=eta)
    assert_same_image(got.array, expected)
    deterministic = tiny.generate(PROMPT, steps=5, seeds=[7, 8], num_images=2, sampler="ddim")
    assert np.abs(deterministic.array - got.array).max() > MAX_PIXEL_ERROR  # eta adds noise


def test_sdxl_ddim_with_eta_equals_diffusers(exported_sdxl, tiny_sdxl):
    reference = sdxl_reference("StableDiffusionXLPipeline", tiny_sdxl["base"])
    reference.scheduler = reference_scheduler("ddim", dict(reference.scheduler.config))
    expected = reference(
        PROMPT,
        num_inference_steps=4,
        guidance_scale=5.0,
        eta=1.0,
        generator=torch.Generator("cpu").manual_seed(3),
        output_type="np",
    ).images
    got = Pipeline.load(exported_sdxl("base")).generate(
        PROMPT, steps=4, guidance_scale=5.0, seed=3, sampler="ddim", eta=1.0
    )
    assert_same_image(got.array, expected)


def test_a_cancelled_run_offers_its_latents_so_far_decoded(tiny):
    """What A1111's interrupt returns: the latents after the last finished step, decoded (here
    checked against a preview of that step, which decodes the same latents)."""
    import threading

    from sdrt.runtime.features.preview import Preview
    from sdrt.runtime.loop.context import GenerationCancelled
    from sdrt.runtime.request import GenerationRequest

    stop_after, previews = 3, {}
    cancel = threading.Event()

    def progress(done: int, total: int) -> None:
        if done == stop_after:
            cancel.set()

    def keep(step: int, total: int, images) -> None:
        previews[step] = images

    request = GenerationRequest(PROMPT, steps=8, seeds=[5, 6], num_images=2, sampler="euler_a")
    with pytest.raises(GenerationCancelled) as stopped:
        tiny.run(request, progress=progress, cancel=cancel, preview=Preview(stop_after, keep))
    partial = stopped.value.partial()
    assert len(partial.images) == 2 and partial.parameters["seeds"] == [5, 6] and partial.parameters["steps"] == 8
    for got, want in zip(partial.images, previews[stop_after]):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    finished = tiny.run(request)
    assert np.abs(finished.array - partial.array).max() > MAX_PIXEL_ERROR  # stopped before the end
