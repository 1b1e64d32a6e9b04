"""FLUX.2 [klein] on the tiny random model against diffusers' Flux2KleinPipeline (CPU generator,
fp32): the chat wrapping with an empty think block and max-length padding, the Qwen3 layers
joined, patchified latents with the VAE's batch-norm statistics, FLUX.2's empirical shift, real
CFG on the base model and none on a distilled one. Tolerance: tests/support/images.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from sdrt.errors import GenerationError
from sdrt.runtime.pipeline import Pipeline
from tests.support.images import assert_same_image

PROMPT = "a red fox in a snowy forest at dawn"
SIZE = {"height": 64, "width": 48}
STEPS = 2
NO_HEAVY_IMPORTS = Path(__file__).parent.parent / "no_heavy_imports.py"


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


@pytest.mark.parametrize("guidance", [4.0, 1.0])
def test_base_text_to_image_equals_flux2_klein_pipeline(tiny_flux2_klein, klein, guidance):
    got = klein.generate(PROMPT, steps=STEPS, seed=1, guidance_scale=guidance, **SIZE)
    assert_same_image(got.array, _diffusers_image(tiny_flux2_klein, klein, 1, guidance_scale=guidance))


def test_distilled_ignores_guidance_as_the_pipeline(tiny_flux2_klein, distilled_export):
    ours = Pipeline.load(distilled_export)
    got = ours.generate(PROMPT, steps=STEPS, seed=2, guidance_scale=4.0, **SIZE)
    expected = _diffusers_image(tiny_flux2_klein, ours, 2, distilled=True, guidance_scale=4.0)
    assert_same_image(got.array, expected)
    assert any("ignored" in warning for warning in got.warnings)


def test_bad_requests_are_one_error_naming_the_field(klein):
    with pytest.raises(GenerationError) as error:
        klein.generate(PROMPT, steps=1, seed=0, height=60, width=48)
    assert error.value.param == "height"
    with pytest.raises(GenerationError) as error:
        klein.generate(PROMPT, steps=1, seed=0, true_cfg_scale=2.0, **SIZE)
    assert error.value.param == "true_cfg_scale"
