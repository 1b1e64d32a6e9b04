"""Requests with one seed per image (`seeds`) whose images cannot share one run: from an init
image or init latents (the VAE encoder's draw takes one image's generator), or with the hires
fix (its second pass starts from each image). Each image then runs as the request for its
prompt with its seed alone, so it equals that request by construction. Text-to-image runs
its images in one batch instead, a generator per image (sdrt.runtime.rng.GeneratorGroup)."""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from sdrt.runtime.loop.context import GenerationCancelled, RunWatch
from sdrt.runtime.request import GenerationRequest
from sdrt.runtime.seeds import image_seeds

if TYPE_CHECKING:
    from sdrt.runtime.compose import GenerationResult
    from sdrt.runtime.pipeline import Pipeline


def runs_per_image(request: GenerationRequest) -> bool:
    """Whether the request's images run one at a time (see the module's note)."""
    from_image = request.init_image is not None or request.init_latents is not None
    counted = isinstance(request.num_images, int) and request.num_images > 0  # else resolve() says what is wrong
    return request.seeds is not None and counted and (from_image or request.hires is not None)


def per_image_run(pipeline: Pipeline, request: GenerationRequest, watch: RunWatch) -> GenerationResult:
    """Each image as its own request (its prompt, negative prompt, seed and init latents row)."""
    prompts = list(request.prompt) if isinstance(request.prompt, (list, tuple)) else [request.prompt]
    count = request.num_images
    seeds = image_seeds(request.seed, request.seeds, len(prompts) * count)
    negatives = request.negative_prompt
    given = None if request.init_latents is None else np.asarray(request.init_latents)
    results = []
    for index, seed in enumerate(seeds):
        which = index // count
        latents = given
        if given is not None and len(seeds) > 1 and given.shape[0] == len(seeds):
            latents = given[index : index + 1]
        alone = replace(
            request,
            prompt=prompts[which],
            negative_prompt=negatives[which] if isinstance(negatives, (list, tuple)) else negatives,
            seed=seed,
            seeds=None,
            num_images=1,
            init_latents=latents,
            a1111_noise=None if request.a1111_noise is None else request.a1111_noise.for_image(index),
        )
        try:
            results.append(pipeline.run(alone, watch.progress, watch.cancel, watch.preview))
        except GenerationCancelled as stopped:
            if stopped.partial is not None:  # the images finished, and this one so far
                stopped.partial = functools.partial(_with_partial, request, prompts, seeds, results, stopped.partial)
            raise
    return _merged(request, prompts, seeds, results)


def _with_partial(request, prompts, seeds, done: list[GenerationResult], partial) -> GenerationResult:
    return _merged(request, prompts, seeds, [*done, partial()])


def _merged(
    request: GenerationRequest, prompts: list[str], seeds: list[int], results: list[GenerationResult]
) -> GenerationResult:
    """One result of the images' runs, with the request's prompts and seeds in its parameters."""
    count = request.num_images
    merged = results[0]
    merged.images = [image for result in results for image in result.images]
    merged.array = np.concatenate([result.array for result in results])
    if all(result.latents is not None for result in results):
        merged.latents = np.concatenate([result.latents for result in results])
    merged.warnings = list(dict.fromkeys(warning for result in results for warning in result.warnings))
    merged.parameters.update(
        prompt=prompts if len(prompts) > 1 else prompts[0],
        negative_prompt=request.negative_prompt,
        seed=seeds[0],
        seeds=seeds,
        num_images=count,
    )
    if request.a1111_noise is not None:  # every image's variation seed
        from sdrt.runtime.a1111_noise import noise_parameters

        merged.parameters["a1111_noise"] = noise_parameters(request.a1111_noise)
    merged.timings = functools.reduce(lambda a, b: a.plus(b), [result.timings for result in results])
    return merged
