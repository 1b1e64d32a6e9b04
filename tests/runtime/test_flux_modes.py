"""FLUX.1 Fill and Kontext on tiny random models against diffusers' FluxFillPipeline and
FluxKontextPipeline (CPU generator, fp32; tolerance as tests/runtime/test_flux.py: every engine
reproduces its module to a relative 1e-6, the loop repeats the pipeline's float32 arithmetic).

Most Kontext tests pass sizes explicitly: the reference at its own size (`_auto_resize=False`,
sdrt's `kontext_auto_resize=False`) and the output's area as `max_area`, so neither side resizes
(sdrt.runtime.families.flux_kontext); `test_kontext_auto_resize_equals_the_pipelines` holds the
pipeline's own sizes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sdrt.errors import GenerationError
from sdrt.runtime.families.flux_fill import mask_cells
from sdrt.runtime.pipeline import Pipeline
from sdrt.runtime.request import GenerationRequest
from tests.support.images import MAX_PIXEL_ERROR, assert_same_image

PROMPT = "a red fox in a snowy forest at dawn"
SIZE = {"height": 64, "width": 48}
STEPS = 3
#: FluxFillPipeline's default guidance scale; Kontext's is FluxPipeline's.
FILL_GUIDANCE, KONTEXT_GUIDANCE = 30.0, 3.5
#: Kontext at the sizes given: the reference's own, the output's as requested (its area as max_area).
AS_GIVEN = {"kontext_auto_resize": False, "kontext_max_area": SIZE["height"] * SIZE["width"]}
AS_GIVEN_CLI = ["--no-kontext-resize", "--kontext-max-area", str(AS_GIVEN["kontext_max_area"])]


def _image(seed: int, height: int, width: int) -> Image.Image:
    pixels = np.random.default_rng(seed).random((height, width, 3))
    return Image.fromarray((pixels * 255).astype(np.uint8))


def _mask() -> Image.Image:
    hole = np.zeros((SIZE["height"], SIZE["width"]), np.uint8)
    hole[16:48, 8:40] = 255
    return Image.fromarray(hole)


def _reference(cls, folder):
    pipeline = cls.from_pretrained(folder)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def fill(exported_flux_fill) -> Pipeline:
    return Pipeline.load(exported_flux_fill["export"])


@pytest.fixture(scope="module")
def kontext(exported_flux_kontext) -> Pipeline:
    return Pipeline.load(exported_flux_kontext)


def test_mask_cells_are_fill_pipelines_mask_channels():
    """FluxFillPipeline.prepare_mask_latents' view / permute / reshape of the full-size mask."""
    mask = torch.rand(2, 1, 32, 16, generator=torch.Generator().manual_seed(0))
    expected = mask[:, 0].view(2, 4, 8, 2, 8).permute(0, 2, 4, 1, 3).reshape(2, 64, 4, 2)
    np.testing.assert_array_equal(mask_cells(mask.numpy(), 8), expected.numpy())


def test_the_fill_export_records_its_conditioning_channels(fill, exported_flux_fill, exported_flux_kontext):
    from click.testing import CliRunner

    from sdrt.cli import main

    manifest = fill.manifest
    assert manifest.flux.conditioning_channels == 320 and manifest.unet_in_channels == 384
    assert not manifest.flux.kontext
    for folder, variant in ((exported_flux_fill["export"], "FLUX.1 Fill:"), (exported_flux_kontext, "FLUX.1 Kontext:")):
        info = CliRunner().invoke(main, ["info", str(folder)])
        assert info.exit_code == 0 and variant in info.output, info.output


@pytest.mark.parametrize("strength", [1.0, pytest.param(0.5, marks=pytest.mark.slow)])
def test_fill_equals_flux_fill_pipeline(exported_flux_fill, fill, strength):
    from diffusers import FluxFillPipeline

    image, mask = _image(1, **SIZE), _mask()
    got = fill.generate(
        PROMPT, init_image=image, mask_image=mask, strength=strength, steps=STEPS, seed=8,
        guidance_scale=FILL_GUIDANCE, **SIZE,
    )  # fmt: skip
    expected = _reference(FluxFillPipeline, exported_flux_fill["source"])(
        PROMPT,
        image=image,
        mask_image=mask,
        strength=strength,
        num_inference_steps=STEPS,
        guidance_scale=FILL_GUIDANCE,
        generator=torch.Generator().manual_seed(8),
        max_sequence_length=fill.manifest.flux.max_sequence_length,
        output_type="np",
        **SIZE,
    ).images
    assert expected.std() > 0.01
    assert_same_image(got.array, expected)


def test_fill_without_a_mask_is_one_error_naming_it(fill):
    with pytest.raises(GenerationError, match="FLUX.1 Fill model: give it an image and a mask") as raised:
        fill.generate(PROMPT, init_image=_image(1, **SIZE), steps=1, seed=0, **SIZE)
    assert raised.value.param == "mask_image"


@pytest.mark.parametrize(
    ("reference_size", "settings"),
    [
        ((32, 48), {}),
        pytest.param((64, 48), {"negative_prompt": "blurry", "true_cfg_scale": 3.0}, marks=pytest.mark.slow),
    ],
)
def test_kontext_equals_flux_kontext_pipeline(tiny_flux, kontext, reference_size, settings):
    """A reference of another size than the output: its tokens follow the image's, with ids (1, row, column)."""
    from diffusers import FluxKontextPipeline

    reference = _image(2, *reference_size)
    got = kontext.generate(
        PROMPT, init_image=reference, steps=STEPS, seed=4, guidance_scale=KONTEXT_GUIDANCE, **SIZE, **settings,
        **AS_GIVEN,
    )  # fmt: skip
    expected = _reference(FluxKontextPipeline, tiny_flux["dev"])(
        image=reference,
        prompt=PROMPT,
        num_inference_steps=STEPS,
        guidance_scale=KONTEXT_GUIDANCE,
        generator=torch.Generator().manual_seed(4),
        max_sequence_length=kontext.manifest.flux.max_sequence_length,
        max_area=SIZE["height"] * SIZE["width"],
        _auto_resize=False,
        output_type="np",
        **SIZE,
        **settings,
    ).images
    assert expected.std() > 0.01
    assert_same_image(got.array, expected)
    assert "strength" not in got.parameters  # a reference, not a start: nothing to record
    plain = kontext.generate(PROMPT, init_image=_image(3, *reference_size), steps=STEPS, seed=4, **SIZE, **AS_GIVEN)
    assert np.abs(plain.array - got.array).max() > MAX_PIXEL_ERROR  # the reference changes the image


#: An output area other than the request's: 64x48 at twice its area is 80x64 on the 16-pixel grid.
DOUBLE_AREA = 2 * SIZE["height"] * SIZE["width"]


@pytest.fixture(scope="module")
def kontext_reference(tiny_flux):
    from diffusers import FluxKontextPipeline

    return _reference(FluxKontextPipeline, tiny_flux["dev"])


class _Sized(Exception):
    """Raised once the reference is preprocessed: its pixels are known, nothing more is run."""


@pytest.mark.parametrize(
    ("reference_size", "size", "area"),
    [((48, 80), SIZE, DOUBLE_AREA), ((100, 37), {"width": 1536}, None), ((512, 512), {}, 5000), ((33, 70), {}, None)],
)
def test_kontext_sizes_are_the_pipelines(kontext_reference, kontext, monkeypatch, reference_size, size, area):
    """FluxKontextPipeline's own sizes (`_auto_resize` and `max_area` at their defaults or given):
    the output size it checks and the reference pixels it preprocesses (read from its calls, the
    run stopped there), equal to the size sdrt generates at and the pixels it encodes. The rest of
    an edit with a reference of any size is test_kontext_equals_flux_kontext_pipeline's; a whole
    run at a preferred resolution (about 1 megapixel) needs over 2 GiB in the tiny VAE encoder's
    attention on either side, so none runs here."""
    import sdrt.runtime.families.flux_kontext as flux_kontext
    from sdrt.runtime.imaging.inputs import to_model_input

    pipeline, seen = kontext_reference, {}
    preprocess = pipeline.image_processor.preprocess

    def stop_after_preprocess(*args, **kwargs):
        seen["diffusers"] = preprocess(*args, **kwargs).numpy()
        raise _Sized

    def check_inputs(prompt, prompt_2, height, width, **_):
        seen["output"] = (height, width)

    def stop_after_model_input(image, height, width):
        seen["sdrt"] = to_model_input(image, height, width)
        raise _Sized

    monkeypatch.setattr(pipeline.image_processor, "preprocess", stop_after_preprocess)
    monkeypatch.setattr(pipeline, "check_inputs", check_inputs)
    monkeypatch.setattr(flux_kontext, "to_model_input", stop_after_model_input)
    reference = _image(7, *reference_size)
    area_setting = {} if area is None else {"max_area": area}
    with pytest.raises(_Sized):
        pipeline(image=reference, prompt=PROMPT, max_sequence_length=8, **size, **area_setting)
    resolved = GenerationRequest(PROMPT, init_image=reference, kontext_max_area=area, **size).resolve(kontext.manifest)
    assert (resolved.height, resolved.width) == seen["output"]
    with pytest.raises(_Sized):
        kontext.generate(PROMPT, init_image=reference, steps=1, seed=0, kontext_max_area=area, **size)
    assert seen["sdrt"].shape == seen["diffusers"].shape
    np.testing.assert_array_equal(seen["sdrt"], seen["diffusers"])


@pytest.mark.parametrize(
    ("settings", "field", "message"),
    [
        ({}, "init_image", "Kontext model: it edits a reference image"),
        ({"init_image": "mask"}, "mask_image", "takes no mask_image"),
        ({"init_image": "image", "strength": 0.5}, "strength", "takes no strength"),
        ({"init_image": "image", "kontext_max_area": 0}, "kontext_max_area", "a positive number of pixels"),
        ({"init_image": "image", "kontext_auto_resize": "yes"}, "kontext_auto_resize", "must be true or false"),
    ],
)
def test_bad_kontext_requests_are_one_error_naming_the_field(kontext, settings, field, message):
    image = _image(2, **SIZE)
    settings = {**settings, **({"init_image": image} if "init_image" in settings else {})}
    if field == "mask_image":
        settings["mask_image"] = _mask()
    with pytest.raises(GenerationError, match=message) as raised:
        kontext.generate(PROMPT, steps=1, seed=0, **SIZE, **settings)
    assert raised.value.param == field


@pytest.mark.slow  # the torch-free test below runs `sdrt generate --image` on Kontext in the default run
def test_sdrt_generate_image_on_a_kontext_export_edits_it(exported_flux_kontext, kontext, tmp_path):
    """`sdrt generate --image ref.png`: the PNG is Pipeline.generate's edit of the reference."""
    from click.testing import CliRunner

    from sdrt.cli import main

    reference, out = tmp_path / "ref.png", tmp_path / "edit.png"
    _image(2, 32, 48).save(reference)
    arguments = [
        "generate", PROMPT, "--model", str(exported_flux_kontext), "--image", str(reference), "--steps", "2",
        "--seed", "5", "--height", str(SIZE["height"]), "--width", str(SIZE["width"]), "--out", str(out), "--quiet",
        *AS_GIVEN_CLI,
    ]  # fmt: skip
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 0, result.output
    written = np.asarray(Image.open(out).convert("RGB"), dtype=np.float32) / 255
    settings = {"steps": 2, "seed": 5, "guidance_scale": KONTEXT_GUIDANCE, **SIZE, **AS_GIVEN}  # the family default
    expected = kontext.generate(PROMPT, init_image=Image.open(reference), **settings).array[0]
    assert np.abs(written - expected).max() <= 0.5 / 255 + 1e-6  # 8-bit rounding
    missing = CliRunner().invoke(main, arguments[:4] + arguments[6:])
    assert missing.exit_code != 0 and "Kontext model: it edits a reference image" in missing.output
    assert "Traceback" not in missing.output


@pytest.mark.parametrize(
    ("extra", "cfg"),
    [({}, "1.0"), ({"negative_prompt": "blurry", "true_cfg_scale": 4.0}, "4.0"), ({"true_cfg_scale": 4.0}, "1.0")],
)
def test_png_parameters_record_the_distilled_guidance_as_forge(extra, cfg):
    """Forge on FLUX.1 dev: `CFG scale` is the real CFG (1: none), `Distilled CFG Scale` the guidance input."""
    from sdrt.runtime.imaging.png_info import format_parameters, parse_parameters

    parameters = {
        "steps": 4, "sampler": "flow_euler", "guidance_scale": 3.5, "distilled_guidance": 3.5, "seed": 1,
        "width": 48, "height": 64, "model": "tiny-flux", **extra,
    }  # fmt: skip
    fields = parse_parameters(format_parameters(PROMPT, parameters))
    assert fields["CFG scale"] == cfg and fields["Distilled CFG Scale"] == "3.5"


@pytest.mark.slow
def test_kontext_batches_and_fill_batches_equal_diffusers(tiny_flux, exported_flux_fill, kontext, fill):
    """Two images a prompt: every row gets the reference's tokens (Kontext) or the mask channels (Fill)."""
    from diffusers import FluxFillPipeline, FluxKontextPipeline

    reference = _image(2, 32, 48)
    settings = {"steps": 2, "seed": 9, "num_images": 2, **SIZE}
    got = kontext.generate(PROMPT, init_image=reference, guidance_scale=KONTEXT_GUIDANCE, **settings, **AS_GIVEN)
    expected = _reference(FluxKontextPipeline, tiny_flux["dev"])(
        image=reference, prompt=PROMPT, num_inference_steps=2, num_images_per_prompt=2,
        guidance_scale=KONTEXT_GUIDANCE, generator=torch.Generator().manual_seed(9),
        max_area=SIZE["height"] * SIZE["width"], _auto_resize=False, output_type="np",
        max_sequence_length=kontext.manifest.flux.max_sequence_length, **SIZE,
    ).images  # fmt: skip
    for ours, theirs in zip(got.array, expected, strict=True):
        assert_same_image(ours, theirs)
    image, mask = _image(1, **SIZE), _mask()
    got = fill.generate(PROMPT, init_image=image, mask_image=mask, guidance_scale=FILL_GUIDANCE, **settings)
    expected = _reference(FluxFillPipeline, exported_flux_fill["source"])(
        PROMPT, image=image, mask_image=mask, num_inference_steps=2, num_images_per_prompt=2,
        guidance_scale=FILL_GUIDANCE, generator=torch.Generator().manual_seed(9), output_type="np",
        max_sequence_length=fill.manifest.flux.max_sequence_length, **SIZE,
    ).images  # fmt: skip
    for ours, theirs in zip(got.array, expected, strict=True):
        assert_same_image(ours, theirs)


def test_schnell_fill_and_kontext_run_in_a_process_without_torch(
    exported_flux, exported_flux_fill, exported_flux_kontext, fill, kontext, tmp_path
):
    """`sdrt generate` on schnell, Fill and Kontext exports in one process that cannot import
    torch (tests/no_heavy_imports.py), each PNG equal to Pipeline.generate here (which the tests
    above hold equal to diffusers) within 8-bit rounding."""
    import subprocess
    import sys
    from pathlib import Path

    image, mask, reference = tmp_path / "image.png", tmp_path / "mask.png", tmp_path / "ref.png"
    _image(1, SIZE["height"], SIZE["width"]).save(image)
    _mask().save(mask)
    _image(2, 32, 48).save(reference)
    common = ["--steps", "2", "--seed", "3", "--height", str(SIZE["height"]), "--width", str(SIZE["width"]), "--quiet"]
    runs = {
        "schnell": [str(exported_flux("schnell"))],
        "fill": [str(exported_flux_fill["export"]), "--init-image", str(image), "--mask", str(mask)],
        "kontext": [str(exported_flux_kontext), "--image", str(reference), *AS_GIVEN_CLI],
    }
    calls = [
        ["generate", PROMPT, "--model", *arguments, *common, "--out", str(tmp_path / f"{name}.png")]
        for name, arguments in runs.items()
    ]
    code = "from sdrt.cli import main\n" + "".join(f"main({call!r}, standalone_mode=False)\n" for call in calls)
    no_torch = Path(__file__).parent.parent / "no_heavy_imports.py"
    completed = subprocess.run([sys.executable, str(no_torch), code], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    settings = {"steps": 2, "seed": 3, "guidance_scale": KONTEXT_GUIDANCE, **SIZE}  # the CLI: the family default
    expected = {
        "schnell": Pipeline.load(exported_flux("schnell")).generate(PROMPT, **settings),
        "fill": fill.generate(  # the CLI's default on Fill: FluxFillPipeline's guidance 30
            PROMPT,
            init_image=Image.open(image),
            mask_image=Image.open(mask),
            **{**settings, "guidance_scale": FILL_GUIDANCE},
        ),
        "kontext": kontext.generate(PROMPT, init_image=Image.open(reference), **settings, **AS_GIVEN),
    }
    for name, result in expected.items():
        written = np.asarray(Image.open(tmp_path / f"{name}.png").convert("RGB"), dtype=np.float32) / 255
        assert np.abs(written - result.array[0]).max() <= 0.5 / 255 + 1e-6, name  # 8-bit rounding
        assert result.array.std() > 0.01, name
