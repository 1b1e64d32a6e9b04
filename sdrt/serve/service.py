"""Admission, batching and execution of generations, with no HTTP framework: a bounded count
of admitted requests (a full service answers 503), `concurrency` workers that run batches of
compatible requests in threads, and cancellation (timeout or disconnect) through a cancel token
the pipeline checks at every denoising step."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from dataclasses import replace
from typing import Any, Protocol

from sdrt.errors import SdrtError
from sdrt.runtime.loop.timings import DENOISE, TEXT_ENCODER, TOTAL, VAE_DECODER
from sdrt.runtime.pipeline import GenerationCancelled
from sdrt.runtime.request import MAX_SEED, GenerationRequest
from sdrt.serve.batching import Job, batch_key, merged_request, split_result, take_batch, take_compatible
from sdrt.serve.metrics import Metrics
from sdrt.serve.model_pool import ModelLock, ModelPool
from sdrt.serve.progress import Progress
from sdrt.serve.schemas import RequestError, ServeSettings

#: The timings the metrics endpoint reports as histograms (sdrt.runtime.loop.timings).
OBSERVED_STAGES = (TEXT_ENCODER, DENOISE, VAE_DECODER, TOTAL)

POLL_S = 0.05
SHUTDOWN = "shutdown"  # Stopped.kind when the server stops (besides A1111's "interrupt" and "skip")
#: The API whose jobs A1111's /interrupt and /skip stop (Job.api); the others' never.
A1111_API = "a1111"


#: A1111's /interrupt (its job answers with the images so far; /skip drops them).
INTERRUPT = "interrupt"


class Stopped(Exception):
    """A generation stopped by A1111's /interrupt or /skip, or by the server's shutdown (`kind`),
    not by its client. `partial`: an interrupted request's images so far (A1111 returns them)."""

    def __init__(self, kind: str, partial=None):
        super().__init__(kind)
        self.kind = kind
        self.partial = partial


class Request(Protocol):
    """What the service needs of an HTTP request: whether its client is still there."""

    async def is_disconnected(self) -> bool: ...


class BatchCancel:
    """The cancel token of a batch: set once every request in it is cancelled."""

    def __init__(self, batch: list[Job]):
        self.batch = batch

    def is_set(self) -> bool:
        return all(job.cancel.is_set() for job in self.batch)


class Service:
    """Admission, batching and execution. Admitted requests wait in `pending`; each of
    `concurrency` workers takes the oldest one plus the compatible requests behind it (see
    sdrt.serve.batching) and runs them as one generate() call in a thread. A batch stops at its
    next denoising step once every request in it has timed out or disconnected."""

    def __init__(self, pipeline, settings: ServeSettings, load=None):
        self.models = ModelPool(pipeline, load)
        self.settings = settings
        self.metrics = Metrics()
        self.progress = Progress()
        self._admitted = 0
        self._admit_lock = threading.Lock()
        self._pending: list[Job] = []
        self._wakeup: asyncio.Event | None = None
        self._workers: list[asyncio.Task] = []
        self._running: list[Job] = []
        self._model_lock = ModelLock()  # batches share the models; switch_model replaces the default alone

    @property
    def pipeline(self):
        """The server's default model: what requests that name no model run on."""
        return self.models.default

    def batch_limit(self, job: Job) -> int:
        """The images one call on the job's model may hold."""
        batch_range = self.models.manifest(job.model).dims.get("batch")
        return min(self.settings.max_batch_images, batch_range.max if batch_range else 1)

    def _key(self, job: Job) -> tuple | None:
        """The job's batch key, its model first: requests share a call only on one model."""
        m = self.models.manifest(job.model)
        key = batch_key(job.request, m.native_height, m.native_width)
        return None if key is None else (("model", self.models.key(job.model)), *key)

    async def switch_model(self, folder) -> None:
        """The admin switch (A1111's POST /sdapi/v1/options): the model of `folder` is the
        default from now on, loaded once the running batches are done, while waiting requests
        wait. Requests that name their own model are not affected."""

        def switch():
            with self._model_lock.exclusive():
                self.models.replace_default(folder)

        await asyncio.to_thread(switch)
        for job in self._pending:  # the waiting requests of the default now run on the new one
            if job.model is None:
                job.key = self._key(job)

    def shutdown(self) -> None:
        """The server is stopping: running generations stop at their next step, waiting ones
        are dropped (their requests answer as cancelled)."""
        for job in list(self._pending):
            job.cancel.set()
            job.stopped_by = SHUTDOWN
            if not job.future.done():
                job.future.get_loop().call_soon_threadsafe(
                    lambda future=job.future: future.done() or future.set_result(None)
                )
        self._pending.clear()
        self.stop_running(SHUTDOWN)

    def stop_running(self, kind: str) -> int:
        """Stops the running generations at their next step: A1111's /interrupt and /skip stop
        the running A1111 jobs only (never another API's), the shutdown every one; their
        requests raise Stopped(kind). Returns how many were stopped."""
        running = [
            job for job in self._running if not job.cancel.is_set() and (kind == SHUTDOWN or job.api == A1111_API)
        ]
        for job in running:
            job.stopped_by = kind
            job.cancel.set()
        if running:
            self.progress.stopped(kind)
        return len(running)

    @property
    def admitted(self) -> int:
        """Requests admitted: running or waiting."""
        return self._admitted

    def _start_workers(self) -> asyncio.Event:
        if self._wakeup is None:  # created inside the server's event loop
            self._wakeup = asyncio.Event()
            self._workers = [asyncio.ensure_future(self._worker()) for _ in range(self.settings.concurrency)]
        return self._wakeup

    async def generate(
        self, request: Request, generation: GenerationRequest, model=None, api: str | None = None
    ) -> Any:
        """The request's result, run on the model of folder `model` (None: the default)
        with the jobs of API `api` (A1111_API: /interrupt and /skip may stop it)."""
        settings = self.settings
        with self._admit_lock:
            if self._admitted >= settings.max_queue:
                raise RequestError(503, f"the service is busy ({settings.max_queue} requests queued); retry later")
            self._admitted += 1
            self.metrics.queue_length = self._admitted
        arrived = time.monotonic()
        deadline = arrived + settings.timeout_s
        generation = replace(generation, confined_names=True)  # a client's names: the server's folders only
        try:
            if generation.seed is None and generation.seeds is None:  # drawn here: a batch reports each seed
                generation = replace(generation, seed=random.SystemRandom().randint(0, MAX_SEED))
            job = Job(generation, None, asyncio.get_running_loop().create_future(), model=model, api=api)
            job.key = await asyncio.to_thread(self._key, job)  # reads the prompt's LoRA tags
            self._pending.append(job)
            self._start_workers().set()
            try:
                while not job.future.done():
                    await asyncio.wait({job.future}, timeout=POLL_S)
                    if not job.future.done():
                        await self._check_alive(request, deadline)
            except RequestError:
                await self._abandon(job, wait=True)
                raise
            except BaseException:  # cancelled by the server (shutdown, or Ray Serve on disconnect)
                await self._abandon(job, wait=False)
                raise
            outcome = job.future.result()
            self.metrics.observe("request", time.monotonic() - arrived)
            if isinstance(outcome, BaseException):
                raise outcome
            if outcome is None and job.stopped_by is not None:
                raise Stopped(job.stopped_by)
            return outcome
        finally:
            with self._admit_lock:
                self._admitted -= 1
                self.metrics.queue_length = self._admitted

    async def _abandon(self, job: Job, wait: bool) -> None:
        """Marks a job cancelled. A job still pending leaves the queue; one running in a batch
        whose every request is now cancelled is waited for (one step), so its slot is free when
        the answer goes out."""
        job.cancel.set()
        if job in self._pending:
            self._pending.remove(job)
        elif wait and job.started and all(other.cancel.is_set() for other in job.batch):
            await asyncio.wait({job.future})

    async def _check_alive(self, request: Request, deadline: float) -> None:
        if time.monotonic() > deadline:
            raise RequestError(504, f"the request took longer than {self.settings.timeout_s:g} s")
        if await request.is_disconnected():
            raise RequestError(499, "the client disconnected")

    async def _worker(self) -> None:
        assert self._wakeup is not None
        while True:
            batch = take_batch(self._pending, self.batch_limit)
            if not batch:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self.settings.batch_window_s > 0 and batch[0].key is not None:
                await asyncio.sleep(self.settings.batch_window_s)  # let simultaneous requests join
                take_compatible(self._pending, batch, self.batch_limit(batch[0]))
            self.metrics.in_flight += len(batch)
            self.metrics.observe_batch(len(batch))
            self._running.extend(batch)
            try:
                outcomes = await asyncio.to_thread(self._run_locked, batch)
            except BaseException as error:  # noqa: BLE001 - answered to the requests, never lost
                outcomes = [error] * len(batch)
            finally:
                self.metrics.in_flight -= len(batch)
                for job in batch:
                    self._running.remove(job)
            for job, outcome in zip(batch, outcomes):
                if not job.future.done():
                    job.future.set_result(outcome)

    @staticmethod
    def _stopped_outcomes(stopped: GenerationCancelled, batch: list[Job]) -> list[Any]:
        """None for each cancelled job; for jobs stopped by /interrupt, Stopped with the images
        made so far (the current latents decoded, as A1111 answers an interrupted job)."""
        if stopped.partial is None or not all(job.stopped_by == INTERRUPT for job in batch):
            return [None] * len(batch)
        try:
            partial = stopped.partial()
        except SdrtError:  # the decode failed (an fp16 VAE's overflow): no image, as before
            return [None] * len(batch)
        parts = [partial] if len(batch) == 1 else split_result(partial, batch)
        return [Stopped(INTERRUPT, part) for part in parts]

    def _run_locked(self, batch: list[Job]) -> list[Any]:
        with self._model_lock.shared():
            try:
                pipeline = self.models.get(batch[0].model)
            except Exception as error:  # noqa: BLE001 - answered to the batch's requests
                failure = error if isinstance(error, SdrtError) else RequestError(500, "the model could not be loaded")
                return [failure] * len(batch)
            return self._run(pipeline, batch)

    def _run(self, pipeline, batch: list[Job]) -> list[Any]:
        """Outcomes for a batch: GenerationResult, None (cancelled) or the exception. A batch
        whose call fails on a request's own settings is retried one request at a time, so one
        bad request never fails the others."""

        cancel = BatchCancel(batch)
        preview = None
        if self.settings.preview_every:
            from sdrt.runtime.features.preview import Preview

            preview = Preview(self.settings.preview_every, self.progress.on_preview)
        run = dict(cancel=cancel, progress=self.progress.on_step, preview=preview)
        self.progress.begin()
        try:
            if len(batch) == 1:
                results = [pipeline.run(batch[0].request, **run)]
            else:
                results = split_result(pipeline.run(merged_request(batch), **run), batch)
        except GenerationCancelled as stopped:
            return self._stopped_outcomes(stopped, batch)
        except Exception as error:  # noqa: BLE001 - one request's failure must not fail its batch
            if len(batch) > 1:
                return [self._run(pipeline, [job])[0] for job in batch]
            return [
                error
                if isinstance(error, SdrtError)
                else RequestError(500, f"the generation failed: {type(error).__name__}")
            ]
        finally:
            self.progress.end()
        for stage in OBSERVED_STAGES:
            if stage in results[0].timings:
                self.metrics.observe(stage, results[0].timings[stage])
        return results
