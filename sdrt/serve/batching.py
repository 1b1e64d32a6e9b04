"""Which requests can share one generate() call, and how a shared call is split back.

Each GenerationRequest field declares how it batches (sdrt.runtime.request_fields), and the
lists here are read from those declarations, so a new setting is never left out:

- SHARED fields (size, steps, guidance scale, sampler and schedule, eta, images per prompt,
  SDXL's size conditioning and refiner switch, text options, VAE, DeepCache, LoRAs; strength
  and mask options too, which only requests that run alone read) must be equal: the shared
  call runs with the first request's values.
- PER_ROW fields (prompt, negative prompt, seed) may differ: the shared call takes one of each
  per request, and the pipeline gives each prompt the images it would get alone with its seed
  (stochastic samplers included), so batching never changes a result. `seeds` (one per image)
  is a list by nature: the shared call takes every request's seeds in turn.
- A request that sets an ALONE field (an init image or mask, given latents or init latents,
  hires fix, ControlNets: each carries its own images) runs alone.

Special cases the key handles beyond the declarations:
- a height or width of None is the model's native size, as resolution fills it in;
- the LoRAs are the `loras` field plus the prompt's `<lora:...>` tags (none for a plain prompt);
  a request whose tags or LoRAs cannot be read runs alone, and its resolution says what is wrong;
- whether a negative prompt is given is part of the key (an SDXL model zeroes the negative
  conditioning of requests without one, and "" is encoded), so a merged call has a negative
  prompt for every request or for none;
- a per-row value must be one value (the prompt a str): a request with a list of prompts or
  seeds already has rows of its own, and runs alone;
- a request whose shared values cannot be hashed runs alone (its resolution refuses them).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from sdrt.runtime.features.lora.tags import extract_tags
from sdrt.runtime.features.lora.weights_map import LoraError
from sdrt.runtime.pipeline import GenerationResult
from sdrt.runtime.request import GenerationRequest
from sdrt.runtime.request_fields import Batching, fields_with, is_set

SHARED_SETTINGS = fields_with(GenerationRequest, Batching.SHARED)
PER_ROW_SETTINGS = fields_with(GenerationRequest, Batching.PER_ROW)
UNBATCHABLE = fields_with(GenerationRequest, Batching.ALONE)
#: Shared settings whose None means the model's native value (batch_key's arguments).
NATIVE_SIZE = ("height", "width")
#: What a per-row value may not be: a request's own list of rows (request._prompts, _seeds).
ROWS = (list, tuple, np.ndarray)
#: The per-row field that holds one value per image, a list in every request that sets it.
IMAGE_ROWS = "seeds"


@dataclass(eq=False)
class Job:
    """One admitted request (its seed resolved), its batch key, and the future the worker
    resolves with a GenerationResult, None (cancelled) or an exception."""

    request: GenerationRequest
    key: tuple | None
    future: asyncio.Future
    cancel: threading.Event = field(default_factory=threading.Event)
    batch: list[Job] = field(default_factory=list)  # set when a worker takes it
    stopped_by: str | None = None  # "interrupt" or "skip" (A1111's /interrupt, /skip) when one stopped it
    model: Path | None = None  # the folder of the model it runs on (None: the server's default)
    api: str | None = None  # the API it came from (A1111's /interrupt and /skip stop A1111's jobs only)

    @property
    def images(self) -> int:
        return int(self.request.num_images)

    @property
    def started(self) -> bool:
        return bool(self.batch)


def batch_key(request: GenerationRequest, native_height: int, native_width: int) -> tuple | None:
    """Requests with equal keys may run as one call; None means the request runs alone."""
    if any(is_set(getattr(request, name)) for name in UNBATCHABLE):
        return None
    if not isinstance(request.prompt, str) or any(
        isinstance(getattr(request, name), ROWS) for name in PER_ROW_SETTINGS if name != IMAGE_ROWS
    ):
        return None  # a request with rows of its own (one prompt is a str: its LoRA tags are read)
    shared = {name: getattr(request, name) for name in SHARED_SETTINGS}
    for name, native in zip(NATIVE_SIZE, (native_height, native_width)):
        if shared[name] is None:
            shared[name] = native
    try:
        tags = () if request.plain_prompt else tuple(extract_tags(request.prompt)[1])
        shared["loras"] = tuple(request.loras) + tags
        key = (
            *shared.items(),
            ("negative_prompt given", request.negative_prompt is not None),
            ("seeds given", request.seeds is not None),
        )
        hash(key)
    except (LoraError, TypeError):
        return None  # it runs alone, and its resolution says what is wrong
    return key


def take_batch(pending: list[Job], max_images: int | Callable[[Job], int]) -> list[Job]:
    """Removes and returns the oldest live job plus, when it can batch, the compatible jobs
    behind it (take_compatible), up to `max_images` (or what it says for the oldest job: the
    limit of its model). Cancelled jobs are dropped."""
    pending[:] = [job for job in pending if not job.cancel.is_set()]
    if not pending:
        return []
    batch = [pending.pop(0)]
    batch[0].batch = batch
    take_compatible(pending, batch, max_images(batch[0]) if callable(max_images) else max_images)
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
    """One request for jobs with the same key: a list of each per-row setting (a prompt,
    negative prompt and seed each), or no negative prompt when none of them gives one."""
    rows = {name: [getattr(job.request, name) for job in jobs] for name in PER_ROW_SETTINGS}
    if jobs[0].request.negative_prompt is None:  # the key holds whether one is given
        rows["negative_prompt"] = None
    if jobs[0].request.seeds is None:  # the key holds whether they are given
        rows[IMAGE_ROWS] = None
    else:  # every request's seeds in turn, and no seed beside them
        rows.update({IMAGE_ROWS: [seed for job in jobs for seed in job.request.seeds], "seed": None})
    return replace(jobs[0].request, **rows)


def split_result(result: GenerationResult, jobs: list[Job]) -> list[GenerationResult]:
    """Each job's share of a merged call, with its own per-row settings in `parameters`.
    Timings are the batch's; `batch_images` says how many images shared them. Truncation
    warnings are not attributed to prompts in a batch (the service does not return them)."""
    images_each = jobs[0].images
    total = images_each * len(jobs)
    timings = {**result.timings, "batch_images": total}
    results = []
    for index, job in enumerate(jobs):
        rows = slice(index * images_each, (index + 1) * images_each)
        parameters = {**result.parameters, **{name: getattr(job.request, name) for name in PER_ROW_SETTINGS}}
        if job.request.seeds is None:
            parameters.pop(IMAGE_ROWS)
        else:
            parameters.update(seed=job.request.seeds[0], seeds=list(job.request.seeds))
        results.append(GenerationResult(result.images[rows], result.array[rows], parameters, timings, []))
    return results
