"""Stable Diffusion 3 / 3.5 on a tiny random SD3.5-Medium-shaped model against diffusers'
StableDiffusion3Pipeline (CPU generator, fp32), with T5 and without it (zeros in its place).

Tolerance (tests/support/images.py, 2/255 largest and 0.5/255 mean): every engine reproduces
its PyTorch module to a relative 1e-6 or so (the export's validation) and the loop is the same
float32 operations (the CLIP join and padding, the flow-matching Euler steps, the VAE's shift
and scaling); measured: under 1e-3/255 before 8-bit rounding.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdrt.errors import GenerationError
from sdrt.runtime.features.skip_layers import SkipLayerGuidance
from sdrt.runtime.imaging.png_info import format_parameters
from sdrt.runtime.pipeline import Pipeline
from sdrt.runtime.text.sd3_prompts import BREAK_WARNING
from tests.conftest import sd3_reference
from tests.support.images import MAX_PIXEL_ERROR, assert_same_image

NO_HEAVY_IMPORTS = Path(__file__).parent.parent / "no_heavy_imports.py"
PROMPT = "a red fox in a snowy forest at dawn"
SIZE = {"height": 64, "width": 48}
STEPS = 3
GUIDANCE = 5.0


@pytest.fixture(scope="module")
def with_t5(exported_sd3) -> Pipeline:
    return Pipeline.load(exported_sd3("t5"))


@pytest.fixture(scope="module")
def without_t5(exported_sd3) -> Pipeline:
    return Pipeline.load(exported_sd3("no-t5"))


def _diffusers_image(folder: Path, seed: int, t5: bool = True, class_name="StableDiffusion3Pipeline", **settings):
    settings = {**SIZE, "num_inference_steps": STEPS, "guidance_scale": GUIDANCE, "prompt": PROMPT, **settings}
    return sd3_reference(class_name, folder, t5)(
        generator=torch.Generator().manual_seed(seed), output_type="np", **settings
    ).images


@pytest.mark.parametrize(
    ("t5", "seed", "settings"),
    [
        (True, 1, {}),
        (True, 2, {"negative_prompt": "blurry, low quality", "height": 32, "width": 80}),
        (False, 3, {}),
    ],
)
def test_text_to_image_equals_stable_diffusion_3_pipeline(tiny_sd3, with_t5, without_t5, t5, seed, settings):
    ours = with_t5 if t5 else without_t5
    settings = {"guidance_scale": GUIDANCE, **SIZE, **settings}
    got = ours.generate(PROMPT, steps=STEPS, seed=seed, **settings)
    expected = _diffusers_image(tiny_sd3, seed, t5, **settings)
    assert got.parameters["sampler"] == "flow_euler"
    assert_same_image(got.array, expected)


@pytest.mark.parametrize(("guidance", "steps"), [(0.0, 4), (1.0, 1)])
def test_large_turbo_style_runs_one_transformer_batch_and_equal_the_pipeline(
    tiny_sd3, with_t5, monkeypatch, guidance, steps
):
    """SD3.5 Large Turbo's way (few steps, guidance 0): no CFG, so every transformer call has
    one row per image, in sdrt as in StableDiffusion3Pipeline (do_classifier_free_guidance is
    guidance_scale > 1)."""
    ours_batches: list[int] = []
    engine = with_t5.engines["transformer"]
    original = engine.run

    def run(feeds):
        ours_batches.append(len(feeds["hidden_states"]))
        return original(feeds)

    monkeypatch.setattr(engine, "run", run)
    got = with_t5.generate(PROMPT, steps=steps, seed=9, guidance_scale=guidance, **SIZE)
    reference = sd3_reference("StableDiffusion3Pipeline", tiny_sd3)
    their_batches: list[int] = []
    reference.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: their_batches.append(len(kwargs["hidden_states"])), with_kwargs=True
    )
    expected = reference(
        PROMPT, num_inference_steps=steps, guidance_scale=guidance, generator=torch.Generator().manual_seed(9),
        output_type="np", **SIZE,
    ).images  # fmt: skip
    assert_same_image(got.array, expected)
    assert ours_batches == their_batches == [1] * steps


def test_without_t5_the_image_differs_from_with_it(with_t5, without_t5):
    """The --no-t5 export is not the T5 one under another name: T5's states move the image."""
    settings = {"steps": 2, "seed": 5, "guidance_scale": GUIDANCE, **SIZE}
    difference = np.abs(with_t5.generate(PROMPT, **settings).array - without_t5.generate(PROMPT, **settings).array)
    assert difference.max() > MAX_PIXEL_ERROR


@pytest.mark.parametrize(("settings", "field", "message"), [({"height": 40}, "height", "not a multiple of 16")])
def test_bad_requests_are_one_error_naming_the_field(with_t5, settings, field, message):
    with pytest.raises(GenerationError, match=message) as raised:
        with_t5.generate(PROMPT, steps=1, seed=0, **{**SIZE, **settings})
    assert raised.value.param == field


def test_sdrt_generate_runs_sd3_without_torch_and_equals_diffusers(tiny_sd3, exported_sd3, tmp_path):
    """No --guidance: SD3's own default (7.0), StableDiffusion3Pipeline's."""
    out = tmp_path / "fox.png"
    arguments = [
        "generate", PROMPT, "--model", str(exported_sd3("t5")), "--steps", str(STEPS), "--seed", "6",
        "--height", str(SIZE["height"]), "--width", str(SIZE["width"]), "--out", str(out), "--quiet",
    ]  # fmt: skip
    code = f"from sdrt.cli import main\nmain({arguments!r}, standalone_mode=False)\n"
    completed = subprocess.run([sys.executable, str(NO_HEAVY_IMPORTS), code], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    written = np.asarray(Image.open(out).convert("RGB"), dtype=np.float32) / 255
    expected = _diffusers_image(tiny_sd3, 6, guidance_scale=7.0)[0]
    assert np.abs(written - expected).max() <= MAX_PIXEL_ERROR + 0.5 / 255  # 8-bit rounding on top
    assert "CFG scale: 7" in Image.open(out).info["parameters"]


@pytest.mark.parametrize(("steps", "strength", "t5"), [(3, 0.8, True), (4, 0.6, False)])
def test_image_to_image_equals_stable_diffusion_3_img2img_pipeline(tiny_sd3, with_t5, without_t5, steps, strength, t5):
    """3 steps at 0.8 skips none (SD3 rounds the skipped steps down, SD the kept ones)."""
    pixels = np.random.default_rng(0).random((SIZE["height"], SIZE["width"], 3))
    image = Image.fromarray((pixels * 255).astype(np.uint8))
    ours = with_t5 if t5 else without_t5
    got = ours.generate(
        PROMPT, init_image=image, strength=strength, steps=steps, seed=3, guidance_scale=GUIDANCE, **SIZE
    )
    expected = _diffusers_image(
        tiny_sd3, 3, t5, "StableDiffusion3Img2ImgPipeline", image=image, strength=strength, num_inference_steps=steps
    )
    assert_same_image(got.array, expected)


@pytest.mark.parametrize(("layers", "scale", "start", "stop"), [((1,), 2.8, 0.01, 0.9), ((0, 2), 4.0, 0.2, 0.7)])
def test_skip_layer_guidance_equals_stable_diffusion_3_pipeline(tiny_sd3, with_t5, layers, scale, start, stop):
    """The extra conditional call skips the layers through the export's mask (one set of weights)."""
    settings = SkipLayerGuidance(layers, scale, start, stop)
    got = with_t5.generate(PROMPT, steps=4, seed=1, guidance_scale=GUIDANCE, skip_layer_guidance=settings, **SIZE)
    expected = _diffusers_image(
        tiny_sd3,
        1,
        num_inference_steps=4,
        skip_guidance_layers=list(layers),
        skip_layer_guidance_scale=scale,
        skip_layer_guidance_start=start,
        skip_layer_guidance_stop=stop,
    )
    assert_same_image(got.array, expected)
    plain = with_t5.generate(PROMPT, steps=4, seed=1, guidance_scale=GUIDANCE, **SIZE).array
    assert np.abs(plain - got.array).max() > MAX_PIXEL_ERROR  # the guidance changed the image


def test_skip_layer_guidance_without_cfg_is_not_used_with_a_warning(with_t5):
    settings = {"steps": 2, "seed": 3, "guidance_scale": 1.0, **SIZE}
    skipped = with_t5.generate(PROMPT, skip_layer_guidance=SkipLayerGuidance((1,), stop=1.0), **settings)
    assert any("skip-layer guidance runs only with classifier-free guidance" in w for w in skipped.warnings)
    np.testing.assert_array_equal(skipped.array, with_t5.generate(PROMPT, **settings).array)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (SkipLayerGuidance((3,)), r"layers \[3\] are outside this transformer's 0..2"),
        (SkipLayerGuidance(()), "non-empty list"),
        (SkipLayerGuidance((1,), start=0.5, stop=0.2), "start <= stop"),
        (SkipLayerGuidance((1,), scale=float("inf")), "scale must be a finite number"),
    ],
)
def test_bad_skip_layer_guidance_is_one_error_naming_the_field(with_t5, settings, message):
    with pytest.raises(GenerationError, match=message) as raised:
        with_t5.generate(PROMPT, steps=1, seed=0, guidance_scale=GUIDANCE, skip_layer_guidance=settings, **SIZE)
    assert raised.value.param == "skip_layer_guidance"


def test_skip_layer_guidance_on_a_model_without_skippable_layers_is_refused(exported_tiny):
    with pytest.raises(GenerationError, match="applies to Stable Diffusion 3 models only") as raised:
        Pipeline.load(exported_tiny()).generate("a cat", steps=1, skip_layer_guidance=SkipLayerGuidance((1,)))
    assert raised.value.param == "skip_layer_guidance"


def test_t5_off_at_run_time_equals_the_pipeline_without_t5(tiny_sd3, with_t5, without_t5):
    """t5=False on an export with T5: zeros in its place, as the --no-t5 export and diffusers
    with text_encoder_3 None."""
    settings = {"steps": 2, "seed": 7, "guidance_scale": GUIDANCE, **SIZE}
    got = with_t5.generate(PROMPT, t5=False, **settings)
    assert_same_image(got.array, _diffusers_image(tiny_sd3, 7, False, num_inference_steps=2))
    np.testing.assert_array_equal(got.array, without_t5.generate(PROMPT, **settings).array)


def test_t5_asked_for_on_an_export_without_it_is_one_error_naming_the_field(without_t5):
    with pytest.raises(GenerationError, match="has no T5") as raised:
        without_t5.generate(PROMPT, steps=1, seed=0, t5=True, **SIZE)
    assert raised.value.param == "t5"


def test_sdrt_generate_takes_skip_layer_guidance_and_no_t5(tiny_sd3, exported_sd3, tmp_path):
    from click.testing import CliRunner

    from sdrt.cli import main

    out = tmp_path / "fox.png"
    arguments = [
        "generate", PROMPT, "--model", str(exported_sd3("t5")), "--steps", "4", "--seed", "2", "--guidance", "5",
        "--height", str(SIZE["height"]), "--width", str(SIZE["width"]), "--out", str(out), "--quiet",
        "--skip-layers", "0,2", "--skip-layer-stop", "0.9", "--no-t5",
    ]  # fmt: skip
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 0, result.output
    written = np.asarray(Image.open(out).convert("RGB"), dtype=np.float32) / 255
    expected = _diffusers_image(
        tiny_sd3, 2, False, num_inference_steps=4, skip_guidance_layers=[0, 2], skip_layer_guidance_stop=0.9
    )[0]
    assert np.abs(written - expected).max() <= MAX_PIXEL_ERROR + 0.5 / 255  # 8-bit rounding on top
    recorded = Image.open(out).info["parameters"]
    assert "0, 2" in recorded and "skip" in recorded.lower(), recorded
    bad = CliRunner().invoke(main, [*arguments[:-5], "--skip-layers", "9"])
    assert bad.exit_code != 0 and "outside this transformer's 0..2" in bad.output and "Traceback" not in bad.output
    bad = CliRunner().invoke(main, [*arguments, "--max-sequence-length", "0"])
    assert bad.exit_code != 0 and "max_sequence_length must be a whole number from 1 to 256" in bad.output
    assert len(bad.output.strip().splitlines()) == 1, bad.output


def test_sdrt_tokenize_shows_each_sd3_tokenizer(exported_sd3):
    import json

    from click.testing import CliRunner
    from transformers import CLIPTokenizer, T5TokenizerFast

    from sdrt.cli import main

    folder = exported_sd3("t5")
    text = "a red fox </s> in the snow"
    shown = CliRunner().invoke(main, ["tokenize", text, "--model", str(folder), "--json"])
    assert shown.exit_code == 0, shown.output
    row = json.loads(shown.output)[0]
    for name, tokenizer in (("clip_l", "tokenizer"), ("clip_g", "tokenizer_2")):
        assert row[name]["input_ids"] == CLIPTokenizer.from_pretrained(folder / tokenizer)(text).input_ids
    assert row["t5"]["input_ids"] == T5TokenizerFast.from_pretrained(folder / "tokenizer_3")(text).input_ids
    without = CliRunner().invoke(main, ["tokenize", text, "--model", str(exported_sd3("no-t5")), "--json"])
    assert without.exit_code == 0 and "t5" not in json.loads(without.output)[0]


def _inpaint_inputs(seed: int) -> tuple[Image.Image, Image.Image]:
    pixels = np.random.default_rng(seed).random((SIZE["height"], SIZE["width"], 3))
    hole = np.zeros((SIZE["height"], SIZE["width"]), np.uint8)
    hole[16:48, 8:40] = 255
    return Image.fromarray((pixels * 255).astype(np.uint8)), Image.fromarray(hole)


def _inpaint_reference(folder: Path, seed: int, t5: bool, **settings) -> np.ndarray:
    """StableDiffusion3InpaintPipeline's latents, decoded as every other SD3 pipeline decodes them
    (latents / scaling_factor + shift_factor). diffusers 0.42's inpaint pipeline decodes without
    the shift (diffusers issue #13611, fixed by pull request #14671): sdrt keeps SD3's decoding."""
    pipeline = sd3_reference("StableDiffusion3InpaintPipeline", folder, t5)
    settings = {**SIZE, "guidance_scale": GUIDANCE, "prompt": PROMPT, **settings}
    latents = pipeline(generator=torch.Generator().manual_seed(seed), output_type="latent", **settings).images
    config = pipeline.vae.config
    with torch.no_grad():
        decoded = pipeline.vae.decode(latents / config.scaling_factor + config.shift_factor).sample
    return pipeline.image_processor.postprocess(decoded, output_type="np")


@pytest.mark.parametrize(("steps", "strength", "t5", "guidance"), [(3, 0.8, True, GUIDANCE), (3, 1.0, False, 1.0)])
def test_inpainting_equals_stable_diffusion_3_inpaint_pipeline(
    tiny_sd3, with_t5, without_t5, steps, strength, t5, guidance
):
    """The 16-channel transformer denoises everything; after each step the kept region is the
    image's latents noised to the next step's level, as the pipeline (sdrt.runtime.loop.modes)."""
    image, mask = _inpaint_inputs(1)
    ours = with_t5 if t5 else without_t5
    settings = {"steps": steps, "seed": 8, "guidance_scale": guidance, **SIZE}
    got = ours.generate(PROMPT, init_image=image, mask_image=mask, strength=strength, **settings)
    expected = _inpaint_reference(
        tiny_sd3, 8, t5, image=image, mask_image=mask, strength=strength, num_inference_steps=steps,
        guidance_scale=guidance,
    )  # fmt: skip
    assert_same_image(got.array, expected)


_PLAIN_IMAGES: dict[tuple, np.ndarray] = {}


def _plain_image(pipeline: Pipeline, **settings) -> np.ndarray:
    """The image without the setting under test, once per pipeline and settings."""
    key = (id(pipeline), tuple(sorted(settings.items())))
    if key not in _PLAIN_IMAGES:
        _PLAIN_IMAGES[key] = pipeline.generate(PROMPT, **settings).array
    return _PLAIN_IMAGES[key]


@pytest.mark.parametrize(
    ("t5", "ours", "theirs"),
    [
        (True, {"clip_skip": 2}, {"clip_skip": 1}),  # A1111's count: diffusers' clip_skip + 1
        (True, {"clip_skip": 3}, {"clip_skip": 2}),
        (True, {"max_sequence_length": 4}, {"max_sequence_length": 4}),
        (False, {"max_sequence_length": 4}, {"max_sequence_length": 4}),  # T5's zeros that long
    ],
)
def test_clip_skip_and_t5_length_equal_stable_diffusion_3_pipeline(tiny_sd3, with_t5, without_t5, t5, ours, theirs):
    """Clip skip reads CLIP's hidden_states[-(clip_skip + 1)] for the prompt only (the pipeline
    encodes the negative prompt without it); T5's ids (or zeros) are max_sequence_length long."""
    pipeline = with_t5 if t5 else without_t5
    settings = {"steps": 2, "seed": 4, "guidance_scale": GUIDANCE, "negative_prompt": "blurry", **SIZE}
    got = pipeline.generate(PROMPT, **settings, **ours)
    expected = _diffusers_image(
        tiny_sd3, 4, t5, num_inference_steps=2, negative_prompt="blurry", **theirs
    )  # fmt: skip
    assert_same_image(got.array, expected)
    assert np.abs(got.array - _plain_image(pipeline, **settings)).max() > MAX_PIXEL_ERROR
    if t5 and "max_sequence_length" in ours:
        assert any("longer than T5's 4 tokens" in warning for warning in got.warnings), got.warnings
    recorded = got.parameters.get("clip_skip", got.parameters.get("max_sequence_length"))
    assert recorded == next(iter(ours.values()))
    text = format_parameters(PROMPT, got.parameters)
    assert ("Clip skip: " if "clip_skip" in ours else "T5 length: ") + str(recorded) in text, text


@pytest.mark.parametrize(
    ("settings", "field", "message"),
    [
        ({"clip_skip": 4}, "clip_skip", "clip skip 4 is more than text_encoder's 3 layers"),
        ({"max_sequence_length": 0}, "max_sequence_length", "from 1 to 256"),
        ({"max_sequence_length": 257}, "max_sequence_length", r"from 1 to 256 \(this export's T5 length\), got 257"),
        ({"max_sequence_length": "64"}, "max_sequence_length", "whole number"),
    ],
)
def test_bad_text_settings_are_one_error_naming_the_field(with_t5, settings, field, message):
    with pytest.raises(GenerationError, match=message) as raised:
        with_t5.generate(PROMPT, steps=1, seed=0, **{**SIZE, **settings})
    assert raised.value.param == field and "\n" not in str(raised.value)


def test_clip_skip_on_an_export_without_layer_states_asks_for_a_re_export(with_t5):
    """Exports made before the CLIP encoders gave their layer states."""
    from dataclasses import replace

    from sdrt.runtime.sd3_spec import CLIP_LAYER_STATES
    from sdrt.runtime.text.sd3_text_options import check_clip_skip

    manifest = with_t5.manifest
    old = dict(manifest.components)
    clip = old["text_encoder"]
    old["text_encoder"] = replace(clip, outputs=[t for t in clip.outputs if t.name != CLIP_LAYER_STATES])
    with pytest.raises(GenerationError, match="re-export the model") as raised:
        check_clip_skip(2, replace(manifest, components=old), manifest.sd3)
    assert raised.value.param == "clip_skip"
    check_clip_skip(1, replace(manifest, components=old), manifest.sd3)  # no clip skip: the old export runs


WEIGHTED = "a (red fox:2.5) in a [snowy] forest BREAK at dawn"
PLAIN = "a red fox in a snowy forest at dawn"  # WEIGHTED without its syntax (BREAK a space)
FRAGMENTS = [("a ", 1.0), ("red fox", 2.5), (" in a ", 1.0), ("snowy", 1 / 1.1), (" forest", 1.0), ("at dawn", 1.0)]


def _weighted_clip(states: torch.Tensor, tokenizer) -> torch.Tensor:
    """A1111's "Original" emphasis on one CLIP's [1, 77, width] states: each token times its
    fragment's weight, then scaled back to the unweighted mean."""
    weights = [1.0]  # the start token
    for text, weight in FRAGMENTS:
        weights += [weight] * len(tokenizer(text, add_special_tokens=False).input_ids)
    row = torch.ones(states.shape[1])
    row[: len(weights)] = torch.tensor(weights)
    weighted = states * row[None, :, None]
    return weighted * (states.mean() / weighted.mean())


def test_a1111_emphasis_weighs_the_clip_states_and_t5_reads_the_plain_text(tiny_sd3, with_t5, monkeypatch):
    """Expected: the pipeline's own conditioning of the plain prompt (same CLIP ids: CLIP's BPE
    splits at spaces), with each CLIP encoder's part weighted; T5 gets the plain prompt's ids."""
    reference = sd3_reference("StableDiffusion3Pipeline", tiny_sd3)
    with torch.no_grad():
        embeds, negative, pooled, negative_pooled = reference.encode_prompt(
            PLAIN, PLAIN, PLAIN, negative_prompt="blurry", do_classifier_free_guidance=True
        )
    clip = reference.tokenizer.model_max_length
    widths = (reference.text_encoder.config.hidden_size, reference.text_encoder_2.config.hidden_size)
    embeds = embeds.clone()
    start = 0
    for width, tokenizer in zip(widths, (reference.tokenizer, reference.tokenizer_2)):
        part = embeds[:, :clip, start : start + width]
        embeds[:, :clip, start : start + width] = _weighted_clip(part, tokenizer)
        start += width
    expected = reference(
        prompt_embeds=embeds, negative_prompt_embeds=negative, pooled_prompt_embeds=pooled,
        negative_pooled_prompt_embeds=negative_pooled, num_inference_steps=2, guidance_scale=GUIDANCE,
        generator=torch.Generator().manual_seed(5), output_type="np", **SIZE,
    ).images  # fmt: skip
    t5_ids: list[np.ndarray] = []
    engine = with_t5.engines["text_encoder_3"]
    original = engine.run

    def run(feeds):
        t5_ids.append(feeds["input_ids"].copy())
        return original(feeds)

    monkeypatch.setattr(engine, "run", run)
    settings = {"steps": 2, "seed": 5, "guidance_scale": GUIDANCE, "negative_prompt": "blurry", **SIZE}
    got = with_t5.generate(WEIGHTED, **settings)
    assert_same_image(got.array, expected)
    assert got.warnings == [BREAK_WARNING]
    plain = with_t5.generate(PLAIN, **settings)
    assert np.abs(plain.array - got.array).max() > MAX_PIXEL_ERROR  # the weights moved the image
    (weighted_ids, plain_ids) = (ids[:1] for ids in t5_ids)  # the prompt's row (the negative's follows)
    np.testing.assert_array_equal(weighted_ids, plain_ids)
    assert weighted_ids[0].tolist() == reference.tokenizer_3(PLAIN, padding="max_length", max_length=256).input_ids
    unweighted = with_t5.generate(WEIGHTED, plain_prompt=True, **settings)  # brackets as text: other ids
    assert np.abs(unweighted.array - got.array).max() > MAX_PIXEL_ERROR
