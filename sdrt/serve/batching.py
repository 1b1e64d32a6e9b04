"""Which requests can share one generate() call, and how a shared call is split back.

Text-to-image requests batch together when they agree on everything that shapes the denoising
loop: size, steps, guidance scale, sampler, images per prompt, SDXL's size conditioning and
refiner switch, the LoRAs (named or in `<lora:...>` tags) and whether a negative prompt is
given (an SDXL model zeroes the negative conditioning of requests without one). Prompts, negative prompts and seeds may differ: the pipeline takes one seed per prompt and gives each prompt the images it
would get alone (stochastic samplers included), so batching never changes a result. Image-to-
image and inpainting requests (each with its own input image) and requests with given latents
always run alone.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field, replace

from sdrt.runtime.features.lora.tags import extract_tags
from sdrt.runtime.features.lora.weights_map import LoraError
from sdrt.runtime.pipeline import GenerationResult
from sdrt.runtime.request import GenerationRequest

# The per-request settings that must agree for requests to share a UNet call.
SHARED_SETTINGS = ("steps", "guidance_scale", "sampler", "schedule", "num_images", "size_conditioning", "refiner_switch",
                   "emphasis", "clip_skip", "plain_prompt", "vae", "deepcache")
UNBATCHABLE = ("init_image", "mask_image", "latents", "init_latents", "hires")


@dataclass(eq=False)
class Job:
    """One admitted request (its seed resolved), its batch key, and the future the worker
    resolves with a GenerationResult, None (cancelled) or an exception."""

    request: GenerationRequest
    key: tuple | None
    future: asyncio.Future
    cancel: threading.Event = field(default_factory=threading.Event)
    batch: list["Job"] = field(default_factory=list)  # set when a worker takes it
    stopped_by: str | None = None  # "interrupt" or "skip" (A1111's /interrupt, /skip) when one stopped it

    @property
    def images(self) -> int:
        return int(self.request.num_images)

    @property
    def started(self) -> bool:
        return bool(self.batch)


def batch_key(request: GenerationRequest, native_height: int, native_width: int) -> tuple | None:
    """Requests with equal keys may run as one call; None means the request runs alone."""
    if any(getattr(request, name) is not None for name in UNBATCHABLE):
        return None
    if not isinstance(request.prompt, str) or request.controlnets:  # each ControlNet request has its own images
        return None
    try:
        tags = () if request.plain_prompt else tuple(extract_tags(request.prompt)[1])
        loras = tuple(request.loras) + tags
        hash(loras)
    except (LoraError, TypeError):
        return None  # it runs alone, and its resolution says what is wrong
    size = (request.height or native_height, request.width or native_width)
    return (*size, *(getattr(request, name) for name in SHARED_SETTINGS), request.negative_prompt is None, loras)


def take_batch(pending: list[Job], max_images: int) -> list[Job]:
    """Removes and returns the oldest live job plus, when it can batch, the compatible jobs
    behind it (take_compatible). Cancelled jobs are dropped."""
    pending[:] = [job for job in pending if not job.cancel.is_set()]
    if not pending:
        return []
    batch = [pending.pop(0)]
    batch[0].batch = batch
    take_compatible(pending, batch, max_images)
    return batch


def take_compatible(pending: list[Job], batch: list[Job], max_images: int) -> None:
    """Moves the live pending jobs with the batch's key into `batch` (the list every member
    shares), oldest first, while the images fit in `max_images`."""
    key = batch[0].key
    if key is None:
        return
    images = sum(job.images for job in batch)
    for job in list(pending):
        if job.key == key and not job.cancel.is_set() and images + job.images <= max_images:
            pending.remove(job)
            images += job.images
            job.batch = batch
            batch.append(job)


def merged_request(jobs: list[Job]) -> GenerationRequest:
    """One request for jobs with the same key: a prompt, negative prompt and seed each."""
    negatives = None if jobs[0].request.negative_prompt is None else [job.request.negative_prompt for job in jobs]
    return replace(jobs[0].request, prompt=[job.request.prompt for job in jobs], negative_prompt=negatives,
                   seed=[job.request.seed for job in jobs])


def split_result(result: GenerationResult, jobs: list[Job]) -> list[GenerationResult]:
    """Each job's share of a merged call, with its own prompt and seed in `parameters`.
    Timings are the batch's; `batch_images` says how many images shared them. Truncation
    warnings are not attributed to prompts in a batch (the service does not return them)."""
    images_each = jobs[0].images
    total = images_each * len(jobs)
    timings = {**result.timings, "batch_images": total}
    results = []
    for index, job in enumerate(jobs):
        rows = slice(index * images_each, (index + 1) * images_each)
        parameters = {**result.parameters, "prompt": job.request.prompt,
                      "negative_prompt": job.request.negative_prompt, "seed": job.request.seed}
        results.append(GenerationResult(result.images[rows], result.array[rows], parameters, timings, []))
    return results
