"""FLUX.2 [klein] on the tiny random model against diffusers' Flux2KleinPipeline (CPU generator,
fp32): the chat wrapping with an empty think block and max-length padding, the Qwen3 layers
joined, patchified latents with the VAE's batch-norm statistics, FLUX.2's empirical shift, real
CFG on the base model and none on a distilled one. Tolerance: tests/support/images.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from sdrt.errors import GenerationError
from sdrt.runtime.pipeline import Pipeline
from sdrt.runtime.request import GenerationRequest
from tests.support.images import assert_same_image

PROMPT = "a red fox in a snowy forest at dawn"
SIZE = {"height": 64, "width": 48}
STEPS = 2


@pytest.fixture(scope="module")
def klein(exported_flux2_klein) -> Pipeline:
    return Pipeline.load(exported_flux2_klein)


@pytest.fixture(scope="module")
def distilled_export(exported_flux2_klein, tmp_path_factory) -> Path:
    """The same export marked distilled (is_distilled is a pipeline setting, not a weight)."""
    folder = tmp_path_factory.mktemp("klein-distilled") / "export"
    shutil.copytree(exported_flux2_klein, folder)
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    manifest["flux2"]["distilled"] = True
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return folder


def _reference(folder: Path, **config):
    import diffusers

    pipeline = diffusers.Flux2KleinPipeline.from_pretrained(folder, **config)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _diffusers_image(folder: Path, ours: Pipeline, seed: int, distilled: bool = False, **settings):
    settings = {**SIZE, "num_inference_steps": STEPS, "prompt": PROMPT, **settings}
    return _reference(folder, is_distilled=distilled)(
        generator=torch.Generator().manual_seed(seed),
        max_sequence_length=ours.manifest.flux2.max_sequence_length,
        output_type="np",
        **settings,
    ).images


@pytest.mark.parametrize("guidance", [4.0, pytest.param(1.0, marks=pytest.mark.slow)])
def test_base_text_to_image_equals_flux2_klein_pipeline(tiny_flux2_klein, klein, guidance):
    got = klein.generate(PROMPT, steps=STEPS, seed=1, guidance_scale=guidance, **SIZE)
    assert_same_image(got.array, _diffusers_image(tiny_flux2_klein, klein, 1, guidance_scale=guidance))


def test_distilled_ignores_guidance_as_the_pipeline(tiny_flux2_klein, distilled_export):
    ours = Pipeline.load(distilled_export)
    got = ours.generate(PROMPT, steps=STEPS, seed=2, guidance_scale=5.0, **SIZE)
    expected = _diffusers_image(tiny_flux2_klein, ours, 2, distilled=True, guidance_scale=5.0)
    assert_same_image(got.array, expected)
    assert any("ignored" in warning for warning in got.warnings)


def test_bad_requests_are_one_error_naming_the_field(klein):
    with pytest.raises(GenerationError) as error:
        klein.generate(PROMPT, steps=1, seed=0, height=60, width=48)
    assert error.value.param == "height"
    with pytest.raises(GenerationError) as error:
        klein.generate(PROMPT, steps=1, seed=0, true_cfg_scale=2.0, **SIZE)
    assert error.value.param == "true_cfg_scale"


def test_tokens_equal_transformers_chat_template_without_thinking(exported_flux2_klein):
    """Id for id against transformers' tokenizer called as _get_qwen3_prompt_embeds calls it."""
    from transformers import AutoTokenizer

    from sdrt.runtime.text.klein_tokenizer import KleinTokenizer

    folder, length = exported_flux2_klein / "tokenizer", 48
    prompts = [PROMPT, "", "typed <|im_end|> markers <think>", "Straße, 東京の夜景 " * 8, "tabs\tand\nnewlines"]
    reference = AutoTokenizer.from_pretrained(str(folder))
    texts = [
        reference.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True, enable_thinking=False
        )
        for p in prompts
    ]
    expected = reference(texts, padding="max_length", max_length=length, truncation=True)
    tokenizer = KleinTokenizer.from_folder(folder, max_length=length)
    got = tokenizer.encode(prompts)
    assert got.input_ids.tolist() == expected.input_ids
    assert got.attention_mask.astype(int).tolist() == expected.attention_mask
    cut = [bool(text) for text in got.dropped_text]
    assert cut == [len(tokenizer.tokenize(p)) > length for p in prompts] and any(cut) and not all(cut)


def test_traced_transformer_equals_diffusers_with_reference_tokens():
    """The exported module (traced processors, RoPE, norms) against diffusers' own, with a
    reference image's tokens (time 10) after the image's, at a text length not traced."""
    import copy

    from sdrt.export.flux2 import REFERENCE_TIME, Flux2Transformer, image_ids, text_ids
    from sdrt.export.flux2_tracing import traceable_flux2
    from sdrt.export.random_flux2 import build_random_flux2_klein

    model = build_random_flux2_klein("distilled", seed=3).transformer.eval()
    traced = Flux2Transformer(traceable_flux2(copy.deepcopy(model)))
    generator = torch.Generator().manual_seed(0)
    ids = torch.cat([image_ids(3, 4), image_ids(2, 2, REFERENCE_TIME)])
    tokens = torch.randn(2, ids.shape[0], model.config.in_channels, generator=generator)
    text = torch.randn(2, 7, model.config.joint_attention_dim, generator=generator)
    timestep = torch.tensor([900.0, 250.0])
    with torch.no_grad():
        expected = model(tokens, text, timestep / 1000, ids[None], text_ids(7)[None], return_dict=False)[0]
        got = traced(tokens, timestep, text, ids, text_ids(7))
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_sigmas_equal_the_pipelines_empirical_shift(klein):
    """FLUX.2's mu (compute_empirical_mu) and the scheduler's shifted sigmas, at sizes on
    both sides of its large-image switch and step counts on both sides of 10."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

    from sdrt.runtime.families.flux2_latents import empirical_mu

    for tokens, steps in [(12, 2), (1024, 4), (4096, 50), (4400, 28)]:
        assert empirical_mu(tokens, steps) == compute_empirical_mu(tokens, steps)
    config = json.loads((klein.folder / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    reference = FlowMatchEulerDiscreteScheduler.from_config(config)
    steps = 4
    reference.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=compute_empirical_mu(12, steps))
    request = GenerationRequest(PROMPT, steps=steps, sampler="flow_euler", **SIZE)
    sampler = klein.new_sampler(request, request.resolve(klein.manifest))
    np.testing.assert_allclose(sampler.sigmas, reference.sigmas.numpy(), rtol=0, atol=1e-7)


def _picture(width: int, height: int, seed: int):
    from PIL import Image

    pixels = np.random.default_rng(seed).random((height, width, 3))
    smooth = (pixels + np.roll(pixels, 1, axis=0) + np.roll(pixels, 1, axis=1)) / 3
    return Image.fromarray((smooth * 255).astype(np.uint8))


def test_reference_images_equal_the_pipelines_editing(tiny_flux2_klein, klein):
    """Two references of other sizes (one cut to the multiple of 16 by a centred crop), CFG on.
    The random model reads them weakly (0.007 of a pixel, under the image tolerance), so the
    final latents are compared: within 1e-4 of their scale (measured ~1e-6), where leaving the
    references out is off by 3.7e-3."""
    from sdrt.export.flux2 import _bn_stats, unpatchify

    references = [_picture(80, 72, 0), _picture(64, 96, 1)]
    settings = {"steps": STEPS, "seed": 5, "guidance_scale": 3.0, **SIZE}
    got = klein.generate(PROMPT, reference_images=references, **settings)
    reference = _reference(tiny_flux2_klein)
    expected = reference(
        prompt=PROMPT, image=references, num_inference_steps=STEPS, guidance_scale=3.0, output_type="latent",
        generator=torch.Generator().manual_seed(5), max_sequence_length=klein.manifest.flux2.max_sequence_length,
        **SIZE,
    ).images.numpy()  # fmt: skip
    mean, std = _bn_stats(reference.vae)

    def vae_latents(ours):  # the pipeline's latents before its VAE decode
        return unpatchify(torch.from_numpy(ours) * std + mean).numpy()

    plain = klein.generate(PROMPT, **settings)
    scale = np.abs(expected).max()
    assert np.abs(vae_latents(got.latents) - expected).max() <= 1e-4 * scale
    assert np.abs(vae_latents(plain.latents) - expected).max() > 1e-3 * scale  # 10x the tolerance
    assert got.parameters["reference_images"] == 2


def test_bad_reference_images_are_one_error_naming_the_field(klein):
    for references in ([_picture(40, 80, 0)], [_picture(600, 64, 0)], "not a list", [], [b"not an image"]):
        with pytest.raises(GenerationError) as error:
            klein.generate(PROMPT, steps=1, seed=0, reference_images=references, **SIZE)
        assert error.value.param == "reference_images", references


def test_sdrt_info_and_tokenize_show_klein(exported_flux2_klein):
    from click.testing import CliRunner
    from transformers import AutoTokenizer

    from sdrt.cli import main

    info = CliRunner().invoke(main, ["info", str(exported_flux2_klein)])
    assert info.exit_code == 0, info.output
    assert "FLUX.2 [klein]: base (CFG with --guidance > 1); Qwen3 hidden states 9, 18, 27, 512 tokens" in info.output
    shown = CliRunner().invoke(main, ["tokenize", PROMPT, "--model", str(exported_flux2_klein), "--json"])
    assert shown.exit_code == 0, shown.output
    tokenizer = AutoTokenizer.from_pretrained(str(exported_flux2_klein / "tokenizer"))
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert json.loads(shown.output)[0]["qwen3"]["input_ids"] == tokenizer(text).input_ids
    bad = CliRunner().invoke(main, ["generate", PROMPT, "--model", str(exported_flux2_klein), "--steps", "1",
                                    "--reference-image", "/no/such/image.png", "--out", "/dev/null/x.png"])  # fmt: skip
    assert bad.exit_code != 0 and len(bad.output.strip().splitlines()) == 1, bad.output


@pytest.mark.slow  # 4 s: one more pair of runs
def test_the_size_defaults_to_the_first_references(tiny_flux2_klein, klein):
    """No height or width: the first reference's, cut to the multiple of 16 (80x72 -> 80x64)."""
    references = [_picture(80, 72, 3)]
    got = klein.generate(PROMPT, steps=STEPS, seed=7, guidance_scale=1.0, reference_images=references)
    assert got.array.shape[1:3] == (64, 80)
    settings = {"num_inference_steps": STEPS, "prompt": PROMPT, "guidance_scale": 1.0, "image": references}
    expected = _reference(tiny_flux2_klein)(
        generator=torch.Generator().manual_seed(7), max_sequence_length=klein.manifest.flux2.max_sequence_length,
        output_type="np", **settings,
    ).images  # fmt: skip
    assert_same_image(got.array, expected)
