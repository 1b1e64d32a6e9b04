"""A1111's hires fix: a text-to-image first pass, an upscale (of the latents, or of the decoded
images with a pixel upscaler), and an image-to-image second pass at the larger size. Each pass
equals its diffusers counterpart: the first a text-to-image pipeline, the second an
image-to-image pipeline given the upscaled latents as its image (latent upscalers, resized as
`torch.nn.functional.interpolate` does: sdrt.runtime.imaging.resample) or the upscaled picture (pixel
upscalers), with the same seed.

With a pixel upscaler and several images, each image's second pass runs alone with its
prompt's seed (diffusers' image-to-image takes one picture per prompt); latent upscalers keep
the batch. The PNG parameters record the first pass's size and A1111's "Hires" fields.

With A1111's samplers (the k-diffusion family) the second pass is A1111's: its img2img from the
upscaled latents (or the upscaled picture's), all the hires steps run (img2img_fix_steps' rule),
with each image seed's first noise at the larger size.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from sdrt.errors import GenerationError
from sdrt.runtime.imaging.resample import resize_latents
from sdrt.runtime.loop.context import RunWatch
from sdrt.runtime.schedulers import SAMPLERS
from sdrt.runtime.schedulers.kdiffusion.a1111_settings import PARAMETERS_KEY as SETTINGS_KEY

if TYPE_CHECKING:
    from sdrt.runtime.pipeline import GenerationResult, Pipeline
    from sdrt.runtime.request import GenerationRequest

#: A1111's upscaler names (any case) -> ("latent", interpolate mode) or ("pixel", PIL resampling).
UPSCALERS = {
    "Latent": ("latent", "bilinear"),
    "Latent (antialiased)": ("latent", "bilinear-antialias"),
    "Latent (bicubic)": ("latent", "bicubic"),
    "Latent (bicubic antialiased)": ("latent", "bicubic-antialias"),
    "Latent (nearest)": ("latent", "nearest"),
    "Latent (nearest-exact)": ("latent", "nearest-exact"),
    "Lanczos": ("pixel", Image.LANCZOS),
    "Nearest": ("pixel", Image.NEAREST),
    "None": ("pixel", Image.LANCZOS),  # A1111 resizes with Lanczos when no upscaler is named
}
DEFAULT_UPSCALER = "Latent"
DEFAULT_STRENGTH = 0.7  # A1111's denoising strength for the second pass
MAX_SCALE = 4.0


def upscaler_named(name: str) -> str:
    """The registry name for `name` in any case, or ValueError naming the choices."""
    for known in UPSCALERS:
        if known.lower() == str(name).strip().lower():
            return known
    raise ValueError(f"unknown hires upscaler {name!r}; choose one of {', '.join(UPSCALERS)}")


@dataclass(frozen=True)
class HiresFix:
    """The second pass: its size (scale, or a width and/or height), upscaler, steps (0: the
    first pass's), strength, and optional prompt, negative prompt, sampler and schedule."""

    scale: float = 2.0
    width: int | None = None
    height: int | None = None
    upscaler: str = DEFAULT_UPSCALER
    steps: int = 0
    strength: float = DEFAULT_STRENGTH
    prompt: str | None = None
    negative_prompt: str | None = None
    sampler: str | None = None
    schedule: str | None = None

    def problem(self) -> str | None:
        if self.upscaler not in UPSCALERS:
            return f"unknown hires upscaler {self.upscaler!r}; choose one of {', '.join(UPSCALERS)}"
        if not 1 <= self.scale <= MAX_SCALE:
            return f"the hires scale must be from 1 to {MAX_SCALE:g}, got {self.scale}"
        if not 0 < self.strength <= 1:
            return f"the hires strength must be in (0, 1], got {self.strength}"
        if self.steps < 0:
            return "hires steps must be >= 0 (0: as many as the first pass)"
        return None

    def size(self, height: int, width: int, multiple: int) -> tuple[int, int]:
        """(height, width) of the second pass, rounded down to `multiple`."""
        if self.width and self.height:
            target_h, target_w = self.height, self.width
            if abs(target_w / target_h - width / height) > multiple / min(target_h, target_w):
                raise ValueError(
                    f"a hires size of {target_w}x{target_h} changes the first pass's aspect ratio "
                    f"({width}x{height}); give one side, or the same ratio"
                )
        elif self.width or self.height:
            ratio = (self.width or 0) / width if self.width else (self.height or 0) / height
            target_h, target_w = round(height * ratio), round(width * ratio)
        else:
            target_h, target_w = int(height * self.scale), int(width * self.scale)
        return target_h - target_h % multiple, target_w - target_w % multiple


def hires_run(pipeline: Pipeline, request: GenerationRequest, watch: RunWatch) -> GenerationResult:
    """`pipeline.run(request)` with its hires fix (GenerationRequest.hires)."""
    hires = request.hires
    if hires.problem():
        raise GenerationError(hires.problem(), "hires")
    request.resolve(pipeline.manifest)  # the whole request checked, what combines with the hires fix among it
    kind, mode = UPSCALERS[hires.upscaler]
    first = pipeline.run(
        replace(request, hires=None), watch.progress, watch.cancel, watch.preview, latents_only=kind == "latent"
    )
    m = pipeline.manifest
    try:
        height, width = hires.size(first.parameters["height"], first.parameters["width"], m.vae_scale_factor)
    except ValueError as error:
        raise GenerationError(str(error), "hires") from None
    second = replace(
        request,
        hires=None,
        height=height,
        width=width,
        strength=hires.strength,
        steps=hires.steps or request.steps,
        prompt=hires.prompt or request.prompt,
        negative_prompt=hires.negative_prompt or request.negative_prompt,
        sampler=hires.sampler or request.sampler,
        schedule=hires.schedule or request.schedule,
        seed=first.parameters["seed"],
    )
    if getattr(SAMPLERS[second.sampler].cls, "starts_images_as_a1111", False):
        # A1111's second pass hands its steps to sample_img2img, whose setup_img2img_steps then
        # runs them all (of a schedule of steps / strength): img2img_fix_steps' rule.
        second = replace(second, img2img_fix_steps=True)
    if kind == "latent":
        latents = resize_latents(first.latents, height // m.vae_scale_factor, width // m.vae_scale_factor, mode)
        result = pipeline.run(replace(second, init_latents=latents), watch.progress, watch.cancel, watch.preview)
    else:
        result = _pixel_passes(pipeline, second, first, mode, watch)
    if SETTINGS_KEY in first.parameters:  # A1111 keeps the first pass's fields (SGM noise multiplier) too
        result.parameters[SETTINGS_KEY] = {**first.parameters[SETTINGS_KEY], **result.parameters.get(SETTINGS_KEY, {})}
    result.parameters.update(
        width=first.parameters["width"],
        height=first.parameters["height"],
        hires={
            "upscaler": hires.upscaler,
            "steps": hires.steps,
            "strength": hires.strength,
            "width": width,
            "height": height,
            **({"scale": hires.scale} if not (hires.width or hires.height) else {}),
        },
    )
    result.timings = first.timings.merged(result.timings)
    return result


def _pixel_passes(
    pipeline: Pipeline, second: GenerationRequest, first: GenerationResult, resample: int, watch: RunWatch
) -> GenerationResult:
    """One image-to-image pass per first-pass image (see the module's note)."""
    images = [image.resize((second.width, second.height), resample=resample) for image in first.images]
    prompts = second.prompt if isinstance(second.prompt, (list, tuple)) else [second.prompt]
    seeds = second.seed if isinstance(second.seed, (list, tuple)) else [second.seed] * len(prompts)
    negatives = second.negative_prompt
    per_prompt = len(images) // len(prompts)
    results = []
    for index, image in enumerate(images):
        which = index // per_prompt
        negative = negatives[which] if isinstance(negatives, (list, tuple)) else negatives
        results.append(
            pipeline.run(
                replace(
                    second,
                    prompt=prompts[which],
                    negative_prompt=negative,
                    seed=seeds[which],
                    num_images=1,
                    init_image=image,
                ),
                watch.progress,
                watch.cancel,
                watch.preview,
            )
        )
    merged = results[0]
    if len(results) > 1:
        merged.images = [r.images[0] for r in results]
        merged.array = np.concatenate([r.array for r in results])
        merged.latents = np.concatenate([r.latents for r in results])
        merged.parameters.update(
            prompt=first.parameters["prompt"], seed=first.parameters["seed"], num_images=first.parameters["num_images"]
        )
        merged.timings = functools.reduce(lambda a, b: a.plus(b), [r.timings for r in results])
    return merged
