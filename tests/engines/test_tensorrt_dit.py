"""TensorRT for the diffusion-transformer families (FLUX.1, SD3, Z-Image, FLUX.2 [klein], Chroma)
through tests/fake_tensorrt.py: optimization profiles for the transformers' axes as the manifest
names them (FLUX's, Chroma's and klein's image tokens and Z-Image's image slots from the size
range, the text lengths from the export), builds and images equal to the CPU path, and requests
outside the built profile refused in one line."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner

import fake_tensorrt
from sdrt.cli import main
from sdrt.errors import SdrtError
from sdrt.runtime.engines.tensorrt.profiles import plan_profile
from sdrt.runtime.features.references import MAX_REFERENCES
from sdrt.runtime.features.step_caches import parse_cache
from sdrt.runtime.manifest import (
    BATCH,
    HEIGHT,
    LATENT_HEIGHT,
    LATENT_WIDTH,
    T5_SEQUENCE,
    TIMESTEP_BATCH,
    TRANSFORMER,
    UNET_BATCH,
    WIDTH,
    Manifest,
)
from sdrt.runtime.pipeline import Pipeline
from sdrt.runtime.sd3_spec import SD3_SEQUENCE

#: (min, opt, max) sizes of the builds, as height x width: small enough for the fake's CPU engines.
MIN, OPT, MAX = (32, 32), (64, 48), (64, 64)
#: The images compared with the CPU path: the opt size and one of another shape within the profile.
SIZES = ({"height": 64, "width": 48, "seed": 1}, {"height": 32, "width": 64, "seed": 2})
SIZE_ARGS = ["--min", "32x32", "--opt", "48x64", "--max", "64x64", "--max-batch", "2"]


#: FLUX.1 and Z-Image build in the default run (the two token-axis rules); the others in the slow tier.
@pytest.fixture(
    params=["flux", "zimage", *(pytest.param(name, marks=pytest.mark.slow) for name in ("sd3", "flux2", "chroma"))]
)
def dit(request, tmp_path):
    """A private copy of a tiny FLUX.1-dev, SD3, Z-Image, FLUX.2 [klein] or Chroma export (builds
    write into the folder)."""
    source = export_of(request, request.param)
    folder = tmp_path / request.param
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("tensorrt"))
    return folder


def export_of(request, family: str):
    """The tiny export of a family (its session fixture is only built when used)."""
    if family == "flux":
        return request.getfixturevalue("exported_flux")("dev")
    if family == "sd3":
        return request.getfixturevalue("exported_sd3")("t5")
    return request.getfixturevalue(EXPORTS[family])


#: The session fixture of each newer family's tiny export (tests/conftest.py).
EXPORTS = {"zimage": "exported_zimage", "flux2": "exported_flux2_klein", "chroma": "exported_chroma"}


def dynamic_axes(manifest: Manifest) -> set[str]:
    spec = manifest.components[TRANSFORMER]
    return {size for tensor in spec.inputs + spec.outputs for size in tensor.shape if isinstance(size, str)}


def test_transformer_profiles_follow_the_manifest(exported_flux, exported_sd3):
    flux, sd3 = Manifest.load(exported_flux("dev")), Manifest.load(exported_sd3("t5"))
    for manifest in (flux, sd3):
        profile = plan_profile(manifest, min_size=MIN, opt_size=OPT, max_size=MAX)
        assert dynamic_axes(manifest) <= set(profile.dims)  # every axis of the transformer has a range
        factor = manifest.vae_scale_factor
        assert profile.dims[HEIGHT] == (32, 64, 64) and profile.dims[WIDTH] == (32, 48, 64)
        assert profile.dims[LATENT_HEIGHT] == (32 // factor, 64 // factor, 64 // factor)
        # The text lengths the export fixed keep its range (the runtime pads to it).
        for name in {T5_SEQUENCE, SD3_SEQUENCE} & set(manifest.dims):
            valid = manifest.dims[name]
            assert profile.dims[name] == (valid.min, valid.opt, valid.max)
        shapes = profile.shapes(manifest.components[TRANSFORMER])
        for tensor in manifest.components[TRANSFORMER].inputs:
            low, opt, high = shapes[tensor.name]
            assert len(low) == len(tensor.shape) and all(a <= b <= c for a, b, c in zip(low, opt, high))
    # FLUX's image tokens are 2x2 latent patches: 32x32 -> 4x4 latents -> 4; 64x48 -> 12; 64x64 -> 16.
    patch = flux.dims[LATENT_HEIGHT].multiple
    tokens = plan_profile(flux, min_size=MIN, opt_size=OPT, max_size=MAX).dims["image_tokens"]
    assert patch == 2 and tokens == (4, 12, 16)
    assert SD3_SEQUENCE in sd3.dims and T5_SEQUENCE in flux.dims
    hidden = plan_profile(flux, min_size=MIN, opt_size=OPT, max_size=MAX).shapes(flux.components[TRANSFORMER])
    assert hidden["hidden_states"][2][:2] == [8, 16]  # guided batch 4 at the largest image


#: A klein reference larger than 1024 x 1024 pixels is resized to that area (Flux2KleinPipeline's
#: _resize_to_target_area), and one token is 16 x 16 pixels (8x VAE, 2x2 patchified): 4096 at most.
KLEIN_REFERENCE_TOKENS = (1024 // 16) ** 2


#: Each newer family's image-token axis at the (min, opt, max) sizes: Chroma's are FLUX's 2x2
#: latent patches (8x VAE); klein's VAE graph patchifies (16x, one token a latent pixel); Z-Image's
#: 4, 12 and 16 patches each pad to one 32-slot multiple. Their text axes keep the export's range.
#: klein's largest also holds its references (test_reference_tokens_widen_the_image_token_profiles).
IMAGE_AXES = {
    "chroma": ("image_tokens", (4, 12, 16)),
    "flux2": ("image_tokens", (4, 12, 16 + MAX_REFERENCES * KLEIN_REFERENCE_TOKENS)),
    "zimage": ("image_slots", (32, 32, 32)),
}


#: klein's profile spans four references' tokens: its fake build is the slowest (the slow tier has it).
NEWER_FAMILIES = [pytest.param(f, marks=pytest.mark.slow) if f == "flux2" else f for f in sorted(IMAGE_AXES)]


@pytest.mark.parametrize("family", NEWER_FAMILIES)
def test_newer_dit_profiles_follow_the_manifest(request, family):
    manifest = Manifest.load(export_of(request, family))
    profile = plan_profile(manifest, min_size=MIN, opt_size=OPT, max_size=MAX)
    assert dynamic_axes(manifest) <= set(profile.dims)
    axis, expected = IMAGE_AXES[family]
    assert profile.dims[axis] == expected
    sized = {axis, BATCH, UNET_BATCH, TIMESTEP_BATCH, HEIGHT, WIDTH, LATENT_HEIGHT, LATENT_WIDTH}
    for name in set(manifest.dims) - sized:  # text lengths: the export's own range
        valid = manifest.dims[name]
        assert profile.dims[name] == (valid.min, valid.opt, valid.max), name
    if family == "zimage":  # the export's largest image: its slots are the export's most
        native = plan_profile(manifest).dims[axis]
        assert native[2] == manifest.dims[axis].max and native[0] == manifest.dims[axis].multiple


def test_reference_tokens_widen_the_image_token_profiles(request, exported_flux_kontext):
    """The image-token range a TensorRT profile gives the transformer covers the references its
    edits join to the image's tokens: Kontext's one (at most the largest image's, the opt one at
    opt), klein's up to four of at most 1024 x 1024 pixels each whatever the image's size; none
    at min (the smallest image, a reference smaller still). Within the export's own range."""
    image = (4, 12, 16)  # 32x32, 64x48, 64x64 in 2x2 patches of 8x latents (FLUX.1) / 16x (klein)
    kontext = plan_profile(Manifest.load(exported_flux_kontext), min_size=MIN, opt_size=OPT, max_size=MAX)
    assert kontext.dims["image_tokens"] == (image[0], 2 * image[1], 2 * image[2])
    klein = Manifest.load(export_of(request, "flux2"))
    widened = plan_profile(klein, min_size=MIN, opt_size=OPT, max_size=MAX).dims["image_tokens"]
    assert widened == (*image[:2], image[2] + MAX_REFERENCES * KLEIN_REFERENCE_TOKENS)
    largest = plan_profile(klein).dims["image_tokens"]  # the export's largest image and four references
    side = klein.dims[HEIGHT].max // klein.vae_scale_factor
    assert largest[2] == side * side + MAX_REFERENCES * KLEIN_REFERENCE_TOKENS <= klein.dims["image_tokens"].max


@pytest.mark.slow  # two fake builds and four edits
def test_klein_and_kontext_engines_take_reference_images(request, exported_flux_kontext, monkeypatch, tmp_path):
    """Built through the strict fake, each runs an edit with its reference(s) equal to the CPU path.
    The references are within the built size range: the VAE encoder encodes each at its own size,
    and its engine takes the profile's sizes only."""
    from PIL import Image

    stats = fake_tensorrt.install(monkeypatch)
    pixels = np.random.default_rng(4).random((64, 64, 3))
    reference = Image.fromarray((pixels * 255).astype(np.uint8))
    cases = {
        "kontext": (exported_flux_kontext, {"init_image": reference.resize((48, 64))}),
        "flux2": (export_of(request, "flux2"), {"reference_images": [reference, reference.rotate(90)]}),
    }
    for name, (source, edit) in cases.items():
        folder = tmp_path / name
        shutil.copytree(source, folder, ignore=shutil.ignore_patterns("tensorrt"))
        result = CliRunner().invoke(main, ["build", str(folder), *SIZE_ARGS])
        assert result.exit_code == 0, result.output
        settings = {"steps": 2, "seed": 5, "height": 64, "width": 48, **edit}
        expected = Pipeline.load(folder).generate("a red fox", **settings).array
        got = Pipeline.load(folder, backend="tensorrt").generate("a red fox", **settings).array
        assert expected.std() > 0.01, name
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=name)
    assert stats.executions[TRANSFORMER] >= 4


def test_dit_builds_and_images_equal_the_cpu_path(dit, monkeypatch):
    stats = fake_tensorrt.install(monkeypatch)
    result = CliRunner().invoke(main, ["build", str(dit), *SIZE_ARGS])
    assert result.exit_code == 0, result.output
    manifest = Manifest.load(dit)
    transformer = next(b for b in stats.builds if b["onnx"].endswith(f"{TRANSFORMER}/model.onnx"))
    assert set(transformer["profile"]) == {t.name for t in manifest.components[TRANSFORMER].inputs}
    assert len(stats.builds) == len(manifest.components)
    cpu, trt = Pipeline.load(dit), Pipeline.load(dit, backend="tensorrt")
    sizes = SIZES if dit.name in ("flux", "sd3") else SIZES[:1]  # the newer families: one image (cost)
    for settings in sizes:
        expected = cpu.generate("a red fox", steps=2, **settings).array
        got = trt.generate("a red fox", steps=2, **settings).array
        assert expected.std() > 0.01
        np.testing.assert_allclose(got, expected, atol=1e-5)
    assert stats.executions[TRANSFORMER] >= 2 * len(sizes)
    if "taylorseer_cache" in manifest.model_family.features:  # the step cache on the engine: step 1 predicted
        cache = parse_cache("taylorseer:cache_interval=2,disable_cache_before_step=1")
        expected = cpu.generate("a red fox", steps=3, cache=cache, **SIZES[0])
        got = trt.generate("a red fox", steps=3, cache=cache, **SIZES[0])
        assert got.full_steps == expected.full_steps and got.full_steps["cond"] == [0, 2]
        np.testing.assert_allclose(got.array, expected.array, atol=1e-5)
    with pytest.raises(SdrtError, match="height 96 is outside this export's range 32..64"):
        trt.generate("a red fox", steps=1, height=96, width=64)


def test_a_size_outside_the_built_profile_is_one_line_on_the_cli(exported_flux, monkeypatch, tmp_path):
    folder = tmp_path / "flux"
    shutil.copytree(exported_flux("dev"), folder, ignore=shutil.ignore_patterns("tensorrt"))
    fake_tensorrt.install(monkeypatch)
    assert CliRunner().invoke(main, ["build", str(folder), *SIZE_ARGS]).exit_code == 0
    arguments = ["generate", "a fox", "--model", str(folder), "--backend", "tensorrt", "--steps", "1"]
    result = CliRunner().invoke(
        main, [*arguments, "--width", "128", "--height", "64", "--out", str(tmp_path / "x.png")]
    )
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0 and "width 128 is outside this export's range 32..64" in result.output
