"""Inpainting against diffusers' StableDiffusionInpaintPipeline: with an inpainting UNet
(9 input channels) and with an ordinary one (the kept region blended back at every step)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from conftest import diffusers_pipeline, reference_scheduler
from sdrt.cli import main
from sdrt.errors import SdrtError
from sdrt.runtime.imaging.inputs import downsample_nearest, to_mask_input
from sdrt.runtime.pipeline import Pipeline

MAX_PIXEL_ERROR = 2 / 255
SAMPLERS = ["lms", "euler_a", "ddim", "dpmpp_2m", "heun", "unipc"]


@pytest.fixture(scope="module")
def engines(exported_tiny) -> dict[str, Path]:
    return {kind: exported_tiny(kind) for kind in ("inpaint", "standard")}


@pytest.fixture(scope="module")
def references(tiny_models):
    return {
        kind: diffusers_pipeline("StableDiffusionInpaintPipeline", tiny_models[kind])
        for kind in ("inpaint", "standard")
    }


def photo(width=96, height=64) -> Image.Image:
    return Image.fromarray((np.random.default_rng(0).random((height, width, 3)) * 255).astype(np.uint8))


def box_mask(width=96, height=64) -> Image.Image:
    values = np.zeros((height, width), np.uint8)
    values[16:48, 24:72] = 255
    return Image.fromarray(values)


def _grid() -> list:
    """Every (kind, sampler, strength): the default run keeps half, each sampler with both kinds
    and both strengths ((standard, 0.6) and (inpaint, 1.0) for every other sampler, (standard,
    1.0) and (inpaint, 0.6) for the rest), so each kind x strength meets three samplers; the
    other half is the slow tier's."""
    cases = []
    for index, sampler in enumerate(sorted(SAMPLERS)):
        default = {("standard", 0.6), ("inpaint", 1.0)} if index % 2 == 0 else {("standard", 1.0), ("inpaint", 0.6)}
        for kind in ("inpaint", "standard"):
            for strength in (1.0, 0.6):
                marks = () if (kind, strength) in default else pytest.mark.slow
                cases.append(pytest.param(kind, sampler, strength, marks=marks, id=f"{kind}-{sampler}-{strength}"))
    return cases


@pytest.mark.parametrize("kind, sampler, strength", _grid())
def test_inpainting_equals_diffusers(engines, references, tiny_models, kind, sampler, strength):
    ours = Pipeline.load(engines[kind])
    reference = references[kind]
    config = json.loads((tiny_models[kind] / "scheduler" / "scheduler_config.json").read_text())
    reference.scheduler = reference_scheduler(sampler, config)
    result = ours.generate(
        "a photo of a cat",
        init_image=photo(),
        mask_image=box_mask(),
        strength=strength,
        steps=8,
        seed=4,
        sampler=sampler,
        negative_prompt="blurry",
    )
    expected = reference(
        "a photo of a cat",
        image=photo(),
        mask_image=box_mask(),
        strength=strength,
        num_inference_steps=8,
        height=64,
        width=96,
        negative_prompt="blurry",
        output_type="np",
        generator=torch.Generator("cpu").manual_seed(4),
    ).images
    assert result.array.shape == expected.shape == (1, 64, 96, 3)
    assert np.abs(result.array - expected).max() <= MAX_PIXEL_ERROR


def test_inpainting_batch_equals_diffusers(engines, references, tiny_models):
    ours = Pipeline.load(engines["inpaint"])
    reference = references["inpaint"]
    config = json.loads((tiny_models["inpaint"] / "scheduler" / "scheduler_config.json").read_text())
    reference.scheduler = reference_scheduler("lms", config)
    result = ours.generate(["a cat", "a dog"], init_image=photo(), mask_image=box_mask(), steps=4, seed=2, num_images=2)
    expected = reference(
        ["a cat", "a dog"],
        image=photo(),
        mask_image=box_mask(),
        num_inference_steps=4,
        num_images_per_prompt=2,
        height=64,
        width=96,
        output_type="np",
        generator=torch.Generator("cpu").manual_seed(2),
    ).images
    assert result.array.shape == expected.shape == (4, 64, 96, 3)
    assert np.abs(result.array - expected).max() <= MAX_PIXEL_ERROR


@pytest.mark.parametrize("mode", ["L", "1", "RGB", "P"])
def test_mask_modes_agree(mode):
    expected = to_mask_input(box_mask(), photo(), 64, 96)
    assert expected.shape == (1, 1, 64, 96) and set(np.unique(expected)) == {0.0, 1.0}
    np.testing.assert_array_equal(to_mask_input(box_mask().convert(mode), photo(), 64, 96), expected)


def test_alpha_mask_opaque_means_repaint():
    rgba = Image.new("RGBA", (96, 64), (0, 0, 0, 0))
    rgba.paste(Image.new("RGBA", (48, 32), (0, 0, 0, 255)), (24, 16))  # black, but opaque
    np.testing.assert_array_equal(to_mask_input(rgba, photo(), 64, 96), to_mask_input(box_mask(), photo(), 64, 96))


def test_latent_mask_is_torch_nearest():
    mask = to_mask_input(box_mask(), photo(), 64, 96)
    expected = torch.nn.functional.interpolate(torch.from_numpy(mask), size=(8, 12)).numpy()
    np.testing.assert_array_equal(downsample_nearest(mask, 8, 12), expected)
    odd = np.random.default_rng(0).random((1, 1, 37, 53)).astype(np.float32)
    expected = torch.nn.functional.interpolate(torch.from_numpy(odd), size=(9, 11)).numpy()
    np.testing.assert_array_equal(downsample_nearest(odd, 9, 11), expected)


@pytest.mark.parametrize(
    "kind, settings, message",
    [
        ("standard", dict(mask_image=box_mask(48, 32)), "the mask is 48x32 but the image is 96x64"),
        ("standard", dict(init_image=None), "a mask needs an init image"),
        ("inpaint", dict(mask_image=None, init_image=None), "this is an inpainting model"),
        ("inpaint", dict(mask_image="/nonexistent/mask.png"), "input image /nonexistent/mask.png does not exist"),
    ],
)
def test_bad_inpainting_requests(engines, kind, settings, message):
    ours = Pipeline.load(engines[kind])
    settings = {"init_image": photo(), "mask_image": box_mask(), **settings}
    with pytest.raises(SdrtError, match=message):
        ours.generate("a cat", steps=2, seed=0, **settings)


def test_cli_inpainting(engines, tmp_path):
    photo().save(tmp_path / "in.png")
    box_mask().save(tmp_path / "mask.png")
    result = CliRunner().invoke(
        main,
        [
            "generate",
            "a cat",
            "--model",
            str(engines["inpaint"]),
            "--init-image",
            str(tmp_path / "in.png"),
            "--mask",
            str(tmp_path / "mask.png"),
            "--steps",
            "3",
            "--seed",
            "1",
            "--out",
            str(tmp_path / "out.png"),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "out.png") as image:
        assert image.size == (96, 64)
        assert "Denoising strength: 1.0" in image.info["parameters"]


def test_cli_a1111_mask_handling(engines, tmp_path):
    """--invert-mask, --mask-blur, --inpaint-area masked, --mask-padding, --mask-fill and --paste-back
    reach the request (the rules themselves: test_serve_clients, against an independent computation)."""
    from sdrt.runtime.features.inpaint_area import MaskOptions

    photo().save(tmp_path / "in.png")
    box_mask().save(tmp_path / "mask.png")
    arguments = [
        "generate",
        "a cat",
        "--model",
        str(engines["standard"]),
        "--init-image",
        str(tmp_path / "in.png"),
        "--mask",
        str(tmp_path / "mask.png"),
        "--steps",
        "2",
        "--seed",
        "1",
        "--quiet",
    ]
    flags = [
        "--invert-mask",
        "--mask-blur",
        "2",
        "--inpaint-area",
        "masked",
        "--mask-padding",
        "4",
        "--mask-fill",
        "fill",
        "--paste-back",
    ]
    result = CliRunner().invoke(main, [*arguments, *flags, "--out", str(tmp_path / "out.png")])
    assert result.exit_code == 0, result.output
    options = MaskOptions(invert=True, blur_x=2, blur_y=2, fill="fill", only_masked=True, padding=4, paste_back=True)
    expected = (
        Pipeline.load(engines["standard"])
        .generate("a cat", init_image=photo(), mask_image=box_mask(), steps=2, seed=1, mask_options=options)
        .images[0]
    )
    plain = (
        Pipeline.load(engines["standard"])
        .generate("a cat", init_image=photo(), mask_image=box_mask(), steps=2, seed=1)
        .images[0]
    )
    with Image.open(tmp_path / "out.png") as image:
        np.testing.assert_array_equal(np.asarray(image), np.asarray(expected))
        assert not np.array_equal(np.asarray(image), np.asarray(plain))
    refused = CliRunner().invoke(main, [*arguments[:4], "--steps", "1", "--mask-blur", "4", "--quiet"])
    assert refused.exit_code == 2 and "need --mask" in refused.output
