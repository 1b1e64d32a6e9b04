"""Batching in `sdrt serve`: which requests share a UNet call, and that sharing one never
changes a response (each equals the pipeline's result for that request alone)."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import threading

import httpx
import numpy as np
import pytest

from sdrt.runtime.families.sdxl import SizeConditioning
from sdrt.runtime.pipeline import Pipeline
from sdrt.runtime.request import GenerationError, GenerationRequest
from sdrt.runtime.request_fields import BATCHING, SHARED, Batching, policies
from sdrt.serve.app import ServeSettings, create_app
from sdrt.serve.batching import Job, batch_key, merged_request, take_batch
from support.serving import decode_png, live_server

NATIVE = (64, 64)


def job(cancelled: bool = False, **kwargs) -> Job:
    settings = dict(prompt="a cat", steps=4, guidance_scale=7.5, sampler="lms", num_images=1, seed=1)
    settings.update(kwargs)
    request = GenerationRequest(**settings)
    made = Job(request, batch_key(request, *NATIVE), asyncio.Future(loop=asyncio.new_event_loop()))
    if cancelled:
        made.cancel.set()
    return made


def test_keys_agree_only_when_the_loop_is_the_same():
    base = job()
    assert base.key == job(prompt="a dog", seed=7).key
    assert job(negative_prompt="").key == job(prompt="a dog", negative_prompt="blurry", seed=7).key
    assert base.key == job(height=64, width=64).key  # the native size, spelled out
    # A missing negative prompt zeroes an SDXL model's negative conditioning; "" is encoded.
    for different in (
        dict(steps=5),
        dict(guidance_scale=1.0),
        dict(sampler="euler"),
        dict(num_images=2),
        dict(height=128),
        dict(negative_prompt=""),
        dict(refiner_switch=0.5),
        dict(size_conditioning=SizeConditioning(original_size=(64, 64))),
    ):
        assert job(**different).key != base.key, different
    for alone in (dict(init_image="x"), dict(mask_image="x"), dict(latents=np.zeros(1)), dict(prompt=["a", "b"])):
        assert job(**alone).key is None, alone


def test_every_request_field_declares_how_it_batches():
    undeclared = [
        item.name
        for item in dataclasses.fields(GenerationRequest)
        if not isinstance(item.metadata.get(BATCHING), Batching)
    ]
    assert undeclared == []

    @dataclasses.dataclass
    class Undeclared:
        steps: int = dataclasses.field(default=1, metadata=SHARED)
        added: int = 0

    with pytest.raises(TypeError, match="Undeclared.added declares no batching policy"):
        policies(Undeclared)


def test_keys_follow_the_declarations_eta_included():
    """eta is SHARED: TCD requests with different etas get different keys, equal etas one key
    (prompt and seed are PER_ROW); a set ALONE field, or a request's own list of seeds, runs alone."""
    declared = policies(GenerationRequest)
    base = job(sampler="tcd", seed=1)
    assert declared["eta"] is Batching.SHARED
    assert job(sampler="tcd", eta=0.3).key != base.key != job(sampler="tcd", eta=0.7).key
    assert job(sampler="tcd", eta=0.3).key == job(sampler="tcd", eta=0.3, prompt="a dog", seed=5).key
    assert all(declared[name] is Batching.SHARED for name in ("strength", "mask_options", "deepcache", "vae"))
    assert {name for name, policy in declared.items() if policy is Batching.PER_ROW} == {
        "prompt",
        "negative_prompt",
        "seed",
        "seeds",
    }
    assert job(controlnets=[object()]).key is None and job(controlnets=[]).key == job().key
    assert job(seed=[1]).key is None  # its own rows: merging would nest the seed lists
    # One seed per image is a list by nature: requests with seeds batch together, not with `seed` ones.
    with_seeds = job(seed=None, seeds=[4, 5], num_images=2)
    assert with_seeds.key is not None and with_seeds.key == job(seed=None, seeds=[9, 10], num_images=2).key
    assert with_seeds.key != job(num_images=2).key


def test_take_batch_groups_compatible_jobs_in_order_up_to_the_image_limit():
    a, b, c, d, e = job(), job(steps=9), job(prompt="x", cancelled=True), job(prompt="y"), job(prompt="z")
    pending = [c, a, b, d, e]
    batch = take_batch(pending, max_images=2)
    assert batch == [a, d] and pending == [b, e]
    assert all(member.batch is batch for member in batch)
    assert take_batch(pending, max_images=2) == [b]
    assert take_batch(pending, max_images=2) == [e] and pending == []
    alone = [job(init_image="x"), job()]
    assert len(take_batch(alone, max_images=4)) == 1


def test_merged_call_has_a_prompt_negative_and_seed_each():
    merged = merged_request([job(prompt="p", negative_prompt="", seed=3), job(prompt="q", negative_prompt="n", seed=4)])
    assert merged.prompt == ["p", "q"] and merged.negative_prompt == ["", "n"] and merged.seed == [3, 4]
    assert merged.steps == 4 and merged.num_images == 1
    assert merged_request([job(prompt="p"), job(prompt="q")]).negative_prompt is None
    per_image = merged_request([job(seed=None, seeds=[3, 4], num_images=2), job(seed=None, seeds=[8, 9], num_images=2)])
    assert per_image.seeds == [3, 4, 8, 9] and per_image.seed is None and per_image.prompt == ["a cat", "a cat"]


@pytest.fixture(scope="module")
def pipeline(exported_tiny) -> Pipeline:
    return Pipeline.load(exported_tiny("standard"))


def post_together(base: str, payloads: list[dict]) -> list[httpx.Response]:
    responses: list = [None] * len(payloads)

    def send(index: int) -> None:
        responses[index] = httpx.post(f"{base}/v1/images/generations", json=payloads[index], timeout=60)

    threads = [threading.Thread(target=send, args=(index,)) for index in range(len(payloads))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return responses


def metric(text: str, name: str) -> int:
    return int(re.search(rf"^{name} (\d+)$", text, re.MULTILINE).group(1))


@pytest.mark.parametrize("sampler", ["lms", "euler_a"])
def test_requests_that_arrive_together_share_a_call_and_equal_running_alone(pipeline, sampler):
    settings = ServeSettings(max_batch_images=4, batch_window_s=0.5)
    payloads = [
        {"prompt": prompt, "seed": seed, "steps": 3, "n": 2, "scheduler": sampler, "negative_prompt": negative}
        for prompt, seed, negative in (("a photo of a cat", 1, ""), ("a red fox", 2, "blurry"))
    ]
    payloads.append({"prompt": "a red fox", "seed": 2, "steps": 4, "n": 2, "scheduler": sampler})  # other key
    with live_server(create_app(pipeline, settings)) as base:
        responses = post_together(base, payloads)
        text = httpx.get(f"{base}/metrics").text
    assert [response.status_code for response in responses] == [200, 200, 200]
    assert metric(text, "sdrt_batched_requests_total") == 3
    assert metric(text, "sdrt_batches_total") == 2  # the first two together, the third alone
    for payload, response in zip(payloads, responses):
        alone = pipeline.generate(
            payload["prompt"],
            negative_prompt=payload.get("negative_prompt"),
            steps=payload["steps"],
            seeds=[payload["seed"], payload["seed"] + 1],  # the OpenAI route's images: seed + i
            num_images=2,
            sampler=sampler,
        )
        data = response.json()["data"]
        assert [item["seed"] for item in data] == [payload["seed"], payload["seed"] + 1]
        got = [np.asarray(decode_png(item["b64_json"]), dtype=np.int16) for item in data]
        for image, expected in zip(got, alone.images):
            assert np.abs(image - np.asarray(expected, dtype=np.int16)).max() <= 1


def test_tcd_requests_with_different_etas_are_not_merged(pipeline):
    """Each request keeps its own eta (TCD's gamma): a batch with another eta would run with
    the first request's."""
    settings = ServeSettings(max_batch_images=4, batch_window_s=0.5)
    payloads = [
        {"prompt": "a red fox", "seed": seed, "steps": 3, "sampler": "tcd", "guidance_scale": 1.5, "eta": eta}
        for seed, eta in ((1, 0.2), (2, 0.9), (3, 0.2))
    ]
    with live_server(create_app(pipeline, settings)) as base:
        responses = post_together(base, payloads)
        text = httpx.get(f"{base}/metrics").text
    assert [response.status_code for response in responses] == [200, 200, 200]
    assert metric(text, "sdrt_batches_total") == 2  # the two with eta 0.2 together, the other alone
    for payload, response in zip(payloads, responses):
        alone = pipeline.generate(
            payload["prompt"], steps=3, seed=payload["seed"], sampler="tcd", guidance_scale=1.5, eta=payload["eta"]
        )
        image = np.asarray(decode_png(response.json()["data"][0]["b64_json"]), dtype=np.int16)
        assert np.abs(image - np.asarray(alone.images[0], dtype=np.int16)).max() <= 1


class FailsOnPrompt:
    """A pipeline whose calls fail for one prompt (in a batch or alone)."""

    def __init__(self, real: Pipeline, bad: str):
        self.folder, self.manifest, self.backend, self.real, self.bad = (
            real.folder,
            real.manifest,
            real.backend,
            real,
            bad,
        )
        self.calls: list[int] = []

    def run(self, request, progress=None, cancel=None, preview=None):
        prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
        self.calls.append(len(prompts))
        if self.bad in prompts:
            raise GenerationError(f"prompt {self.bad!r} is refused", "prompt")
        return self.real.run(request, progress=progress, cancel=cancel)


def test_a_failing_request_does_not_fail_its_batch(pipeline):
    failing = FailsOnPrompt(pipeline, "boom")
    with live_server(create_app(failing, ServeSettings(batch_window_s=0.5))) as base:
        responses = post_together(
            base, [{"prompt": "a cat", "steps": 1, "seed": 1}, {"prompt": "boom", "steps": 1, "seed": 2}]
        )
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200, 400] and failing.calls[0] == 2 and sorted(failing.calls[1:]) == [1, 1]
    error = next(response for response in responses if response.status_code == 400).json()["error"]
    assert error["param"] == "prompt" and "boom" in error["message"]


def test_batching_off_runs_each_request_alone(pipeline):
    with live_server(create_app(pipeline, ServeSettings(max_batch_images=1, batch_window_s=0.3))) as base:
        responses = post_together(base, [{"prompt": "a cat", "steps": 1}] * 3)
        text = httpx.get(f"{base}/metrics").text
    assert all(response.status_code == 200 for response in responses)
    assert metric(text, "sdrt_batches_total") == 3
