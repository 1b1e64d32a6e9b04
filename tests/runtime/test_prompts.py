"""A1111's prompt language end to end, against diffusers fed the conditioning the rules give.

diffusers has no A1111 prompt language, so each test derives the expected conditioning on its
own with torch and the diffusers text encoders, from fragments and weights written by hand
(the chunking, weighting and mean rescaling as docs/prompts.md states them), feeds it to the
diffusers pipeline as prompt_embeds (swapped between steps with callback_on_step_end for
schedules), and compares the images."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import diffusers_pipeline, reference_scheduler, sdxl_reference
from sdrt.cli import main
from sdrt.errors import SdrtError
from sdrt.runtime.imaging.png_info import PARAMETERS_KEY
from sdrt.runtime.pipeline import Pipeline
from sdrt.runtime.text.prompts.options import TextOptions

MAX_PIXEL_ERROR = 2 / 255
MEAN_PIXEL_ERROR = 0.5 / 255
SAMPLER = "euler"
NO_HEAVY_IMPORTS = Path(__file__).parent.parent / "no_heavy_imports.py"
R = 1.1
# Guidance amplifies the text's effect on these tiny random models, so that a wrong conditioning
# shows as a wrong image (each test also checks that the wrong conditioning would fail).
GUIDANCE = 40.0


@pytest.fixture(scope="module")
def folder(exported_tiny) -> Path:
    return exported_tiny("standard")


@pytest.fixture(scope="module")
def ours(folder) -> Pipeline:
    return Pipeline.load(folder)


@pytest.fixture(scope="module")
def reference(tiny_models):
    pipeline = diffusers_pipeline("StableDiffusionPipeline", tiny_models["standard"])
    pipeline.scheduler = reference_scheduler(SAMPLER, dict(pipeline.scheduler.config))
    return pipeline


def assert_same_image(got: np.ndarray, expected: np.ndarray) -> None:
    difference = np.abs(got - expected)
    assert difference.max() <= MAX_PIXEL_ERROR, f"max {difference.max() * 255:.3f}/255"
    assert difference.mean() <= MEAN_PIXEL_ERROR, f"mean {difference.mean() * 255:.3f}/255"
    assert expected.std() > 0.01


def assert_discriminates(got: np.ndarray, wrong: np.ndarray) -> None:
    assert np.abs(got - wrong).max() > 2 * MAX_PIXEL_ERROR, "the test cannot tell this conditioning apart"


def chunk_ids(tokenizer, fragments: list[tuple[str, float]]) -> tuple[list[int], list[float]]:
    """One chunk: start token, the fragments' tokens, end token, padding (the end token, or
    after the first end token the tokenizer's own pad token)."""
    ids, weights = [tokenizer.bos_token_id], [1.0]
    for text, weight in fragments:
        tokens = tokenizer(text, add_special_tokens=False).input_ids
        ids += tokens
        weights += [weight] * len(tokens)
    ids.append(tokenizer.eos_token_id)
    pad = tokenizer.model_max_length - len(ids)
    return ids + [tokenizer.pad_token_id] * pad, weights + [1.0] * (pad + 1)


def encode_chunks(encoder, tokenizer, chunks, hidden_of, rescale: bool = True):
    """Each chunk encoded alone, weighted, rescaled to its unweighted mean, concatenated."""
    states, pooled = [], None
    for fragments in chunks:
        ids, weights = chunk_ids(tokenizer, fragments)
        with torch.no_grad():
            out = encoder(torch.tensor([ids]), output_hidden_states=True)
        z = hidden_of(out)
        weighted = z * torch.tensor(weights)[None, :, None]
        if rescale:
            weighted = weighted * (z.mean() / weighted.mean())
        states.append(weighted)
        if pooled is None:
            pooled = getattr(out, "text_embeds", None)
    return torch.cat(states, dim=1), pooled


def sd_embeds(pipeline, chunks, clip_skip: int = 1, rescale: bool = True):
    encoder = pipeline.text_encoder

    def hidden(out):
        if clip_skip == 1:
            return out.last_hidden_state
        return encoder.final_layer_norm(out.hidden_states[-clip_skip])

    return encode_chunks(encoder, pipeline.tokenizer, chunks, hidden, rescale)[0]


def reference_image(pipeline, embeds, negative, steps=3, seed=7, schedule=None, **settings) -> np.ndarray:
    """diffusers with prompt embeddings; `schedule[i]` replaces them for step i (i >= 1)."""

    def swap(pipe, step, timestep, tensors):
        if schedule is None or step + 1 >= len(schedule):
            return {}
        return {"prompt_embeds": torch.cat([negative, schedule[step + 1]])}

    generator = torch.Generator("cpu").manual_seed(seed)
    settings.setdefault("guidance_scale", GUIDANCE)
    return pipeline(
        prompt_embeds=embeds,
        negative_prompt_embeds=negative,
        num_inference_steps=steps,
        generator=generator,
        output_type="np",
        callback_on_step_end=swap,
        callback_on_step_end_tensor_inputs=["prompt_embeds"],
        **settings,
    ).images


LONG = "cat " * 70 + ", " + "dog " * 10  # two chunks: the comma back-off moves the dogs


def test_emphasis_and_long_prompts_equal_diffusers_with_the_weighted_chunks(ours, reference):
    prompt = "a (red:2.5) [[[fox]]] BREAK " + LONG
    negative = "blurry BREAK (ugly:0.8) BREAK x"
    chunks = [
        [("a ", 1.0), ("red", 2.5), (" ", 1.0), ("fox", 1 / R**3)],
        [("cat " * 70 + ",", 1.0)],
        [("dog " * 10, 1.0)],
    ]
    negative_chunks = [[("blurry", 1.0)], [("ugly", 0.8)], [("x", 1.0)]]  # diffusers needs equal lengths
    embeds = sd_embeds(reference, chunks)
    negative_embeds = sd_embeds(reference, negative_chunks)
    expected = reference_image(reference, embeds, negative_embeds)
    got = ours.generate(prompt, negative_prompt=negative, steps=3, seed=7, sampler=SAMPLER, guidance_scale=GUIDANCE)
    assert_same_image(got.array, expected)
    assert not got.warnings
    unweighted = [[(text, 1.0) for text, _ in chunk] for chunk in chunks]
    assert_discriminates(got.array, reference_image(reference, sd_embeds(reference, unweighted), negative_embeds))


@pytest.mark.parametrize("emphasis, rescale", [("No norm", False), ("Ignore", None)])
def test_the_other_emphasis_modes(ours, reference, emphasis, rescale):
    chunks = [[("a ", 1.0), ("red", 1.5 if rescale is not None else 1.0), (" fox", 1.0)]]
    embeds = sd_embeds(reference, chunks, rescale=bool(rescale))
    negative = sd_embeds(reference, [[]])
    expected = reference_image(reference, embeds, negative)
    got = ours.generate("a (red:1.5) fox", steps=3, seed=7, sampler=SAMPLER, emphasis=emphasis, guidance_scale=GUIDANCE)
    assert_same_image(got.array, expected)
    original = ours.generate("a (red:1.5) fox", steps=3, seed=7, sampler=SAMPLER, guidance_scale=GUIDANCE)
    assert_discriminates(got.array, original.array)


def test_emphasis_none_reads_brackets_as_text(ours, reference):
    expected = reference_image(
        reference, sd_embeds(reference, [[("a (red:1.5) fox BREAK x", 1.0)]]), sd_embeds(reference, [[]])
    )
    got = ours.generate(
        "a (red:1.5) fox BREAK x", steps=3, seed=7, sampler=SAMPLER, emphasis="None", guidance_scale=GUIDANCE
    )
    assert_same_image(got.array, expected)
    plain = ours.generate(
        "a (red:1.5) fox BREAK x", steps=3, seed=7, sampler=SAMPLER, plain_prompt=True, guidance_scale=GUIDANCE
    )
    np.testing.assert_array_equal(plain.array, got.array)


def test_prompt_and_negative_of_different_lengths_run_as_separate_unet_calls(ours, reference):
    """A1111's default: no padding; each half with its own length (a reference loop here)."""
    embeds = sd_embeds(reference, [[("cat " * 70 + ",", 1.0)], [("dog " * 10, 1.0)]])
    negative = sd_embeds(reference, [[("blurry", 1.0)]])
    scheduler = reference_scheduler(SAMPLER, dict(reference.scheduler.config))
    scheduler.set_timesteps(3)
    generator = torch.Generator("cpu").manual_seed(7)
    latents = torch.randn((1, 4, 8, 8), generator=generator) * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.scale_model_input(latents, t)
            uncond = reference.unet(x, t, negative).sample
            cond = reference.unet(x, t, embeds).sample
            latents = scheduler.step(uncond + GUIDANCE * (cond - uncond), t, latents).prev_sample
        image = reference.vae.decode(latents / reference.vae.config.scaling_factor).sample
    expected = (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    got = ours.generate(LONG, negative_prompt="blurry", steps=3, seed=7, sampler=SAMPLER, guidance_scale=GUIDANCE)
    assert_same_image(got.array, expected)
    padded = sd_embeds(reference, [[("blurry", 1.0)], []])  # padding the negative with an empty chunk
    assert_discriminates(got.array, reference_image(reference, embeds, padded))


def test_prompt_editing_and_alternation_change_the_conditioning_per_step(ours, reference):
    # 4 steps: [cat:dog:2] is cat through step 2 (calls 0, 1, 2), dog after; [snow|rain]
    # alternates by A1111's step count (calls 0 and 1 read step 1).
    texts = ["a cat in snow", "a cat in snow", "a cat in rain", "a dog in snow"]
    schedule = [sd_embeds(reference, [[(text, 1.0)]]) for text in texts]
    negative = sd_embeds(reference, [[]])
    expected = reference_image(reference, schedule[0], negative, steps=4, schedule=schedule)
    got = ours.generate("a [cat:dog:2] in [snow|rain]", steps=4, seed=7, sampler=SAMPLER, guidance_scale=GUIDANCE)
    assert_same_image(got.array, expected)
    off_by_one = [schedule[0], schedule[2], schedule[3], schedule[3]]
    assert_discriminates(got.array, reference_image(reference, schedule[0], negative, steps=4, schedule=off_by_one))


def test_clip_skip_2_equals_diffusers_clip_skip_1(ours, reference):
    """diffusers' clip_skip=1 is the final layer norm of hidden_states[-2] (its own code reads the
    norm from `text_model`, which transformers 5 no longer has, so its formula is applied here).
    A1111 skips the layer for the negative prompt too; diffusers encodes the negative without it."""
    negative = sd_embeds(reference, [[]], clip_skip=2)
    expected = reference_image(reference, sd_embeds(reference, [[("a photo of a cat", 1.0)]], clip_skip=2), negative)
    got = ours.generate("a photo of a cat", steps=3, seed=7, sampler=SAMPLER, clip_skip=2, guidance_scale=GUIDANCE)
    assert_same_image(got.array, expected)
    assert_discriminates(
        got.array,
        reference_image(reference, sd_embeds(reference, [[("a photo of a cat", 1.0)]]), sd_embeds(reference, [[]])),
    )
    assert got.parameters["clip_skip"] == 2
    with pytest.raises(SdrtError, match="clip skip 3 is more than the text encoder's 2 layers"):
        ours.generate("a cat", steps=1, clip_skip=3)


def test_sdxl_weights_each_encoder_and_pools_the_first_chunk(exported_sdxl, tiny_sdxl):
    reference = sdxl_reference("StableDiffusionXLPipeline", tiny_sdxl["base"])
    reference.scheduler = reference_scheduler(SAMPLER, dict(reference.scheduler.config))
    chunks = [[("a ", 1.0), ("red", 1.4), (" fox", 1.0)], [("in the ", 1.0), ("snow", 1 / R)]]
    negative_chunks = [[("blurry", 1.0)], [("x", 1.0)]]

    def both(chunk_list):
        first, _ = encode_chunks(
            reference.text_encoder, reference.tokenizer, chunk_list, lambda out: out.hidden_states[-2]
        )
        second, pooled = encode_chunks(
            reference.text_encoder_2, reference.tokenizer_2, chunk_list, lambda out: out.hidden_states[-2]
        )
        return torch.cat([first, second], dim=-1), pooled

    embeds, pooled = both(chunks)
    negative, negative_pooled = both(negative_chunks)
    generator = torch.Generator("cpu").manual_seed(3)
    expected = reference(
        prompt_embeds=embeds,
        pooled_prompt_embeds=pooled,
        negative_prompt_embeds=negative,
        negative_pooled_prompt_embeds=negative_pooled,
        num_inference_steps=3,
        guidance_scale=GUIDANCE,
        generator=generator,
        output_type="np",
    ).images
    ours = Pipeline.load(exported_sdxl("base"))
    prompt = "a (red:1.4) fox BREAK in the [snow]"
    got = ours.generate(
        prompt, negative_prompt="blurry BREAK x", steps=3, seed=3, guidance_scale=GUIDANCE, sampler=SAMPLER
    )
    assert_same_image(got.array, expected)
    unweighted = ours.generate(
        prompt,
        negative_prompt="blurry BREAK x",
        steps=3,
        seed=3,
        guidance_scale=GUIDANCE,
        sampler=SAMPLER,
        emphasis="Ignore",
    )
    assert_discriminates(got.array, unweighted.array)
    ignored = ours.generate("a fox", steps=1, seed=3, clip_skip=2)
    assert ignored.warnings == ["clip skip is ignored for sdxl models, as A1111 ignores it"]


def test_a_prompt_longer_than_the_export_takes_is_one_clear_error(ours, folder):
    with pytest.raises(
        SdrtError,
        match=r"needs 5 chunks of 75 tokens; this export takes at most 4: shorten it, "
        r"or re-export the model with --max-prompt-chunks 5",
    ):
        ours.generate("cat " * 370, steps=1)
    with pytest.raises(SdrtError, match=r"the negative prompt 'dog dog dog") as caught:
        ours.generate("cat", negative_prompt="dog " * 370, steps=1)
    assert caught.value.param == "negative_prompt"
    result = CliRunner().invoke(main, ["generate", "a (cat:1.2.3)", "--model", str(folder), "--steps", "1"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].startswith("error: prompt has a malformed emphasis weight '1.2.3'")


def test_cli_records_the_prompt_clip_skip_and_emphasis_as_a1111_does(folder, tmp_path):
    out = tmp_path / "out.png"
    prompt = "a (red:1.3) cat, [dog:fox:2]"
    result = CliRunner().invoke(
        main,
        [
            "generate",
            prompt,
            "--model",
            str(folder),
            "--steps",
            "2",
            "--seed",
            "1",
            "--clip-skip",
            "2",
            "--emphasis",
            "No norm",
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    from PIL import Image

    text = Image.open(out).text[PARAMETERS_KEY]
    assert text.startswith(prompt + "\n") and "Clip skip: 2, Emphasis: No norm" in text
    tokens = CliRunner().invoke(main, ["tokenize", "a (red:1.5) cat BREAK dog", "--model", str(folder)])
    assert tokens.exit_code == 0 and "(red:1.5)" in tokens.output and "chunk 2/2" in tokens.output


def test_runs_without_torch(folder, ours, tmp_path):
    prompt = "a (red:1.5) [fox|cat], BREAK " + LONG
    expected = ours.generate(prompt, negative_prompt="[ugly::1]", steps=3, seed=5, clip_skip=2).array
    np.save(tmp_path / "expected.npy", expected)
    code = (
        "import numpy as np\n"
        "from sdrt.runtime.pipeline import Pipeline\n"
        f"result = Pipeline.load({str(folder)!r}).generate({prompt!r}, negative_prompt='[ugly::1]', steps=3, "
        "seed=5, clip_skip=2)\n"
        f"np.testing.assert_array_equal(result.array, np.load({str(tmp_path / 'expected.npy')!r}))\n"
    )
    completed = subprocess.run([sys.executable, str(NO_HEAVY_IMPORTS), code], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr


def test_a_batch_of_prompts_of_different_lengths_equals_each_alone(ours):
    prompts = ["a (red:1.2) fox", LONG, "a [cat:dog:1] BREAK in snow"]
    together = ours.generate(prompts, steps=2, seed=[1, 2, 3], guidance_scale=GUIDANCE)
    for index, prompt in enumerate(prompts):
        alone = ours.generate(prompt, steps=2, seed=index + 1, guidance_scale=GUIDANCE)
        np.testing.assert_allclose(together.array[index], alone.array[0], atol=1e-5)


def test_a_300_token_prompt_on_onnx_runtime_and_through_tensorrt(folder, tmp_path, monkeypatch):
    import shutil

    import fake_tensorrt

    prompt = "(cat:1.1) dog " * 150  # 300 tokens: 4 chunks
    cpu = Pipeline.load(folder)
    assert cpu.text_encoders.chunks(prompt, TextOptions()).count == 4
    expected = cpu.generate(prompt, steps=2, seed=1).array
    model = tmp_path / "model"
    shutil.copytree(folder, model)
    stats = fake_tensorrt.install(monkeypatch)
    built = CliRunner().invoke(main, ["build", str(model), "--static", "64x64", "--max-batch", "1"])
    assert built.exit_code == 0, built.output
    unet = next(b for b in stats.builds if "/unet/" in b["onnx"])
    assert unet["profile"]["encoder_hidden_states"] == [[1, 77, 32], [2, 77, 32], [2, 4 * 77, 32]]
    trt = Pipeline.load(model, backend="tensorrt")
    np.testing.assert_allclose(trt.generate(prompt, steps=2, seed=1).array, expected, atol=1e-5)
    shorter = tmp_path / "shorter"
    shutil.copytree(folder, shorter)
    built = CliRunner().invoke(
        main, ["build", str(shorter), "--static", "64x64", "--max-batch", "1", "--max-prompt-chunks", "2"]
    )
    assert built.exit_code == 0, built.output
    with pytest.raises(SdrtError, match="needs 4 chunks of 75 tokens; this export takes at most 2"):
        Pipeline.load(shorter, backend="tensorrt").generate(prompt, steps=1)


def test_servers_read_the_prompt_language(ours):
    import base64
    import io
    import json

    from fastapi.testclient import TestClient
    from PIL import Image

    from sdrt.serve.app import ServeSettings, create_app

    def pixels(b64: str) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))

    def ours_png(prompt, **settings) -> np.ndarray:
        return np.asarray(ours.generate(prompt, **settings).images[0])

    prompt = "a (red:1.5) fox BREAK [snow|rain]"
    with TestClient(create_app(ours, ServeSettings(randn_source="CPU"))) as client:
        body = {
            "prompt": prompt,
            "steps": 2,
            "seed": 5,
            "width": 64,
            "height": 64,
            "cfg_scale": GUIDANCE,
            "sampler_name": "lms",  # sdrt's default sampler, as ours_png runs (A1111's API default is Euler)
            "override_settings": {"CLIP_stop_at_last_layers": 2, "emphasis": "No norm"},
        }
        response = client.post("/sdapi/v1/txt2img", json=body)
        assert response.status_code == 200, response.text
        expected = ours_png(prompt, steps=2, seed=5, guidance_scale=GUIDANCE, clip_skip=2, emphasis="No norm")
        np.testing.assert_array_equal(pixels(response.json()["images"][0]), expected)
        info = json.loads(response.json()["info"])
        assert info["clip_skip"] == 2 and "Clip skip: 2, Emphasis: No norm" in info["infotexts"][0]
        bad = client.post("/sdapi/v1/txt2img", json={**body, "override_settings": {"emphasis": "Loud"}})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "override_settings.emphasis"
        openai = client.post(
            "/v1/images/generations",
            json={"prompt": prompt, "steps": 2, "seed": 5, "guidance_scale": GUIDANCE, "size": "64x64"},
        )
        np.testing.assert_array_equal(
            pixels(openai.json()["data"][0]["b64_json"]), ours_png(prompt, steps=2, seed=5, guidance_scale=GUIDANCE)
        )
    with TestClient(create_app(ours, ServeSettings(plain_prompts=True))) as client:
        openai = client.post(
            "/v1/images/generations",
            json={"prompt": prompt, "steps": 2, "seed": 5, "guidance_scale": GUIDANCE, "size": "64x64"},
        )
        np.testing.assert_array_equal(
            pixels(openai.json()["data"][0]["b64_json"]),
            ours_png(prompt, steps=2, seed=5, guidance_scale=GUIDANCE, plain_prompt=True),
        )


def test_bench_measures_a_long_weighted_prompt(folder):
    from sdrt.benchmark import BenchSettings, run_benchmark

    settings = BenchSettings(height=64, width=64, steps=2, prompt="(cat:1.2) " * 100)
    report = run_benchmark(str(folder), settings, runs=1, warmup=0)
    assert report["settings"]["prompt"] == settings.prompt
    assert report["sdrt"]["stages"]["text_encoder"]["median"] > 0 and report["sdrt"]["unet_step"]["count"] == 2


def test_sd2_pads_chunks_with_its_pad_token(exported_tiny, tiny_models):
    """SD 2.x's OpenCLIP tokenizer pads with "!" after the end token, in every chunk."""
    reference = diffusers_pipeline("StableDiffusionPipeline", tiny_models["v_prediction"])
    reference.scheduler = reference_scheduler(SAMPLER, dict(reference.scheduler.config))
    assert reference.tokenizer.pad_token_id != reference.tokenizer.eos_token_id
    chunks = [[("a ", 1.0), ("red", 1.4), (" fox", 1.0)], [("snow", 1.0)]]
    expected = reference_image(
        reference, sd_embeds(reference, chunks), sd_embeds(reference, [[("blurry", 1.0)], [("dark", 1.0)]])
    )
    ours = Pipeline.load(exported_tiny("v_prediction"))
    got = ours.generate(
        "a (red:1.4) fox BREAK snow",
        negative_prompt="blurry BREAK dark",
        steps=3,
        seed=7,
        sampler=SAMPLER,
        guidance_scale=GUIDANCE,
    )
    assert_same_image(got.array, expected)
    # Clip skip is A1111's SD 1.x setting: SD 2.x ignores it (with a warning), as A1111 does.
    skipped = ours.generate("a fox", steps=1, seed=1, clip_skip=2)
    assert skipped.warnings == ["clip skip is ignored for sd2 models, as A1111 ignores it"]
