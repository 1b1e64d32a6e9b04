"""One resolved request on a loaded model: its stages composed from the features it uses (the
mode's start, the family's denoiser or DeepCache's, ControlNet's hook, the refiner's stage,
progress and previews), run by the one loop (sdrt.runtime.loop.denoise), and decoded. Pipeline.run
calls it inside the request's LoRA engines and the outer wrappers (hires fix, masked area)."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from sdrt.runtime.a1111_noise import make_generator
from sdrt.runtime.engines import Engine
from sdrt.runtime.features import refiner as refiners
from sdrt.runtime.features.deepcache import StepCachedDenoiser
from sdrt.runtime.loop import modes
from sdrt.runtime.loop.conditioning import clip_skip_warning, encode_conditioning
from sdrt.runtime.loop.context import GenerationCancelled, RunWatch, StepContext
from sdrt.runtime.loop.denoise import denoise
from sdrt.runtime.loop.hooks import ProgressHook, StepHook
from sdrt.runtime.loop.regional import RegionalGuidance, regional_guidance
from sdrt.runtime.loop.stage import Stage
from sdrt.runtime.loop.timings import (
    CONTROLNET_STEPS,
    DENOISE,
    PREVIEWS,
    SCHEDULER_AND_GUIDANCE,
    TEXT_ENCODER,
    UNET_STEPS,
    VAE_DECODER,
    Timings,
)
from sdrt.runtime.manifest import UNET_SHALLOW
from sdrt.runtime.request_resolve import ResolvedRequest
from sdrt.runtime.rng import GeneratorGroup, IndexedDraws, TorchGenerator

if TYPE_CHECKING:
    from sdrt.runtime.pipeline import Pipeline

PIXEL_LEVELS = 255


@dataclass
class GenerationResult:
    """What a request made: its images (8-bit and float), parameters, timings, warnings, latents."""

    images: list[Image.Image]
    array: np.ndarray  # float32 [batch, height, width, 3] in [0, 1], before 8-bit rounding
    parameters: dict
    #: Seconds per stage (sdrt.runtime.loop.timings.Timings); "unet_steps" lists every denoiser call.
    timings: Mapping[str, float | list[float]]
    warnings: list[str] = field(default_factory=list)
    latents: np.ndarray | None = None  # the final latents, before the VAE decode
    #: With a step cache: guidance branch -> the steps whose model call ran in full (the others were cached).
    full_steps: dict[str, list[int]] | None = None


def to_images(array: np.ndarray) -> list[Image.Image]:
    """8-bit images of float [batch, height, width, 3] pixels in [0, 1]."""
    return [Image.fromarray((image * PIXEL_LEVELS).round().astype(np.uint8)) for image in array]


def run_resolved(
    pipeline: Pipeline,
    resolved: ResolvedRequest,
    engines: dict[str, Engine],
    watch: RunWatch,
    warnings: list[str],
    latents_only: bool = False,
) -> GenerationResult:
    """One request on `engines` (the pipeline's, or LoRA-merged ones): its stages composed
    (the mode's start, the denoiser with DeepCache, ControlNet and preview hooks, the
    refiner's stage) and run by the one loop; `parameters` are the embeddings it used."""
    request = resolved.request
    timings = Timings()
    noise = request.a1111_noise
    make = TorchGenerator if noise is None else functools.partial(make_generator, noise.randn_source)
    if len(resolved.seeds) > 1:  # per prompt or per image: every draw splits by rows (step noise too)
        generator = GeneratorGroup([make(value) for value in resolved.seeds], resolved.seed_rows)
    else:
        generator = make(resolved.seeds[0])
    indices = request.ksampler_steps.noise_indices if request.ksampler_steps is not None else None
    if indices is not None:  # ComfyUI's latent batch_index: each image's draw of the one generator
        generator = IndexedDraws(generator, indices)
    names = pipeline.family.denoiser
    engine = engines[names.component]
    with timings.stage(TEXT_ENCODER):
        clip_skip_warning(pipeline.text_encoders, resolved, warnings)
        guider = pipeline.family.guider(engine, resolved, warnings)
        if request.conditionings is None:
            conditioning = encode_conditioning(pipeline.text_encoders, engines, resolved, guider, warnings, timings)
        else:  # ComfyUI's conditioning lists: guider and conditioning in one (sdrt.runtime.loop.regional)
            encoders = pipeline.text_encoders
            guider = conditioning = regional_guidance(encoders, engines, resolved, guider, warnings, timings)
    sampler = pipeline.new_sampler(request, resolved)
    denoiser = pipeline.family.make_denoiser(engine)
    guider.bind(denoiser)
    cache = None
    if request.cache is not None:
        cache = request.cache.start(pipeline, engine, names, guider.unconditional)
        denoiser.step_cache = cache
    if request.deepcache is not None:
        denoiser = StepCachedDenoiser(engine, pipeline.optional_engine(UNET_SHALLOW), names, request.deepcache.interval)
    start = modes.prepare(
        pipeline.manifest,
        resolved,
        sampler,
        generator,
        timings,
        lambda image, draw: pipeline.encode_image(image, draw, request.vae),
    )
    if isinstance(guider, RegionalGuidance):
        guider.follow(sampler, start.first if start.counted_from is None else start.counted_from)
    base = Stage(denoiser, sampler, conditioning, guider, start, pipeline.decode_latents)
    call_sigmas = getattr(sampler, "sigmas", None)
    if call_sigmas is not None:
        call_sigmas = call_sigmas[start.first : start.first + base.steps]  # ComfyUI's rule: levels per call
    control = pipeline.controlnets.prepare(
        resolved, start.first, base.steps, guider.unconditional, engine, warnings, call_sigmas
    )
    if control is not None:
        base.hooks.append(control)
    base.hooks.extend(pipeline.family.step_hooks(pipeline, resolved))
    stages = [base]
    if request.refiner_switch is not None:
        stages.append(refiners.refiner_stage(pipeline.refiner, resolved, base, timings))
    run_hooks: list[StepHook] = [] if watch.progress is None else [ProgressHook(watch.progress)]
    if watch.preview is not None:
        run_hooks.append(watch.preview.hook(pipeline))
    with timings.stage(DENOISE):
        try:
            latents = denoise(stages, StepContext(generator, timings, watch.cancel), run_hooks)
        except GenerationCancelled as stopped:
            if stopped.latents is not None:  # what A1111's interrupt returns: the latents so far, decoded
                stopped.partial = functools.partial(
                    _partial_result, pipeline, conditioning, stages[-1], request, stopped.latents, warnings
                )
            raise
    # Everything in the loop but the denoiser and the ControlNets: sampler, guidance, copies and casts.
    timings.set(
        SCHEDULER_AND_GUIDANCE,
        timings.total(DENOISE) - timings.total(UNET_STEPS) - timings.total(CONTROLNET_STEPS) - timings.total(PREVIEWS),
    )
    with timings.stage(VAE_DECODER):
        if latents_only:
            array = np.zeros((0, resolved.height, resolved.width, 3), dtype=np.float32)
        else:
            array = stages[-1].decode(latents, request.vae)  # the refiner decodes with its own VAE
    images = to_images(array)
    hashes = {e.name: e.short_hash for e in pipeline.text_encoders.embeddings.loaded}
    used = {n: hashes[n] for n in conditioning.embeddings}
    full_steps = None if cache is None else cache.record.full_steps()
    return GenerationResult(images, array, used, timings, warnings, latents, full_steps)


def _partial_result(
    pipeline: Pipeline, conditioning, stage: Stage, request, latents: np.ndarray, warnings: list[str]
) -> GenerationResult:
    """A cancelled run's images: the latents of its last finished step decoded (as a preview is)."""
    array = stage.decode(latents, request.vae)
    images = to_images(array)
    hashes = {e.name: e.short_hash for e in pipeline.text_encoders.embeddings.loaded}
    return GenerationResult(
        images, array, {n: hashes[n] for n in conditioning.embeddings}, Timings(), warnings, latents
    )
