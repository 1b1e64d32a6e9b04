"""The transformer step caches against diffusers' own hooks on the tiny random models: the same
seed through FluxPipeline with `transformer.enable_cache(FirstBlockCacheConfig / TaylorSeerCacheConfig)`
and through sdrt with `cache=`, the images within the suite's tolerance (tests/support/images.py)
and the same model calls run in full, read from diffusers' hook state.

Tolerance: the engines reproduce their modules to ~1e-6 relative (the export's validation); the
first-block decision compares a relative L1 with the threshold, so such errors could flip a step
only within ~1e-6 of it (the thresholds here are far from every step's value: the steps are asserted
equal, which would show a flip). TaylorSeer keeps its factors in bfloat16: a ~1e-7 difference can
move a factor across a rounding boundary, one bfloat16 step (2**-8 relative) of one factor element,
still far inside 2/255 after the VAE (measured: 0.012/255 largest with true CFG, tiny model).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdrt.errors import GenerationError
from sdrt.runtime.features.cache_runs import to_bfloat16
from sdrt.runtime.features.step_caches import FirstBlockCache, TaylorSeer, parse_cache
from sdrt.runtime.pipeline import Pipeline
from tests.support.images import MAX_PIXEL_ERROR, assert_same_image

PROMPT = "a red fox in a snowy forest at dawn"
SIZE = {"height": 64, "width": 48}
GUIDANCE, TRUE_CFG, NEGATIVE = 3.5, 4.0, "blurry"
#: A threshold that skips some steps of the tiny model and runs others, in both branches.
THRESHOLD = 0.25
FBC_STEPS = 6
TAYLOR = "taylorseer:cache_interval=2,disable_cache_before_step=2,max_order=2"
TAYLOR_STEPS = 5


@pytest.fixture(scope="module")
def parts(exported_flux_parts) -> Pipeline:
    return Pipeline.load(exported_flux_parts)


@pytest.fixture(scope="module")
def dev(exported_flux) -> Pipeline:
    return Pipeline.load(exported_flux("dev"))


def _flux_reference(folder, config):
    from diffusers import FluxPipeline

    pipeline = FluxPipeline.from_pretrained(folder)
    pipeline.set_progress_bar_config(disable=True)
    pipeline.transformer.enable_cache(config)
    return pipeline


def _run(pipeline, ours: Pipeline, steps: int, **settings) -> np.ndarray:
    return pipeline(
        PROMPT,
        num_inference_steps=steps,
        guidance_scale=GUIDANCE,
        generator=torch.Generator().manual_seed(1),
        max_sequence_length=ours.manifest.flux.max_sequence_length,
        output_type="np",
        **SIZE,
        **settings,
    ).images


def _branch_steps(calls: list[tuple[str, bool]]) -> dict[str, list[int]]:
    """Per cache context, the steps (that context's call count) that ran in full."""
    steps: dict[str, list[int]] = {}
    counts: dict[str, int] = {}
    for name, full in calls:
        counts[name] = counts.get(name, -1) + 1
        steps.setdefault(name, [])
        if full:
            steps[name].append(counts[name])
    return steps


def test_first_block_cache_equals_diffusers_hook_per_guidance_branch(tiny_flux, parts):
    from diffusers.hooks import FirstBlockCacheConfig

    reference = _flux_reference(tiny_flux["dev"], FirstBlockCacheConfig(threshold=THRESHOLD))
    head = reference.transformer.transformer_blocks[0]._diffusers_hook.get_hook("fbc_leader_block_hook")
    calls: list[tuple[str, bool]] = []
    reference.transformer.register_forward_hook(
        lambda module, args, output: calls.append(
            (head.state_manager.context.name, head.state_manager.get_state().should_compute)
        )
    )
    expected = _run(reference, parts, FBC_STEPS, negative_prompt=NEGATIVE, true_cfg_scale=TRUE_CFG)
    cache = parse_cache(f"first-block:{THRESHOLD}")
    settings = {"steps": FBC_STEPS, "seed": 1, "guidance_scale": GUIDANCE, "negative_prompt": NEGATIVE, **SIZE}
    got = parts.generate(PROMPT, true_cfg_scale=TRUE_CFG, cache=cache, **settings)
    assert got.full_steps == _branch_steps(calls)
    skipped = {name: FBC_STEPS - len(steps) for name, steps in got.full_steps.items()}
    assert all(skipped.values()) and got.full_steps["cond"] != got.full_steps["uncond"]  # the branches differ
    assert_same_image(got.array, expected)
    assert got.parameters["cache"] == f"first-block:{THRESHOLD:g}"


def test_taylorseer_equals_diffusers_lite_mode(tiny_flux, dev):
    from diffusers.hooks import TaylorSeerCacheConfig

    config = TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=2, max_order=2, use_lite_mode=True)
    reference = _flux_reference(tiny_flux["dev"], config)
    computed: list[bool] = []  # per transformer call: whether its first block's attention ran
    reference.transformer.register_forward_pre_hook(lambda *_: computed.append(False))
    attention = reference.transformer.transformer_blocks[0].attn
    attention.register_forward_hook(lambda *_: computed.__setitem__(-1, True))
    expected = _run(reference, dev, TAYLOR_STEPS)
    got = dev.generate(PROMPT, steps=TAYLOR_STEPS, seed=1, guidance_scale=GUIDANCE, cache=parse_cache(TAYLOR), **SIZE)
    computed = [step for step, full in enumerate(computed) if full]
    assert got.full_steps == {"cond": computed} and len(computed) < TAYLOR_STEPS
    assert_same_image(got.array, expected)


def test_bfloat16_rounding_equals_torch():
    values = np.concatenate(
        [
            np.random.default_rng(0).standard_normal(4096).astype(np.float32) * 1e3,
            # ties (the dropped half exactly 0x8000) either side of even, subnormals, the limits
            np.array([0x3F808000, 0x3F818000, 0x00008000, 0x7F7FFFFF, 0x80000001], np.uint32).view(np.float32),
            np.array([np.inf, -np.inf, 0.0, -0.0], np.float32),
        ]
    )
    expected = torch.from_numpy(values).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(to_bfloat16(values), expected)
    assert np.isnan(to_bfloat16(np.array([np.nan], np.float32))).all()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bogus:1", "unknown step cache 'bogus'"),
        ("first-block:-1", "finite number >= 0"),
        ("first-block:x", "takes a number"),
        ("taylorseer:use_lite_mode=0", "lite mode only"),
        ("taylorseer:cache_interval=0", "cache_interval must be"),
        ("taylorseer:order=2", "KEY=VALUE settings of"),
        ("taylorseer:taylor_factors_dtype=fp64", "one of bf16, fp16, fp32"),
    ],
)
def test_bad_cache_settings_are_one_line(text, message):
    with pytest.raises(ValueError, match=message):
        parse_cache(text)


def test_the_settings_read_as_diffusers_configs():
    assert parse_cache("first-block") == FirstBlockCache(0.05)  # FirstBlockCacheConfig's default
    assert parse_cache("taylorseer") == TaylorSeer(5, 3, None, 1, "bf16")  # TaylorSeerCacheConfig's
    made = parse_cache("taylorseer:max_order=2, disable_cache_after_step=9,use_lite_mode=1")
    assert (made.max_order, made.disable_cache_after_step) == (2, 9)
    # TaylorSeerCacheHook's rule: warm-up, then every interval-th step counted from warm-up + 1.
    assert [step for step in range(12) if TaylorSeer(cache_interval=4).computes(step)] == [0, 1, 2, 4, 8]


def test_refusals_name_the_cache_field(dev, exported_flux2_klein):
    from sdrt.runtime.manifest import Manifest
    from sdrt.runtime.request import GenerationRequest

    with pytest.raises(GenerationError, match="re-export it with `sdrt export --cache-graphs`") as raised:
        dev.generate(PROMPT, steps=1, seed=0, cache=FirstBlockCache(), **SIZE)
    assert raised.value.param == "cache"
    klein = Manifest.load(exported_flux2_klein)
    with pytest.raises(GenerationError, match="first-block cache does not run on FLUX.2") as raised:
        GenerationRequest(PROMPT, steps=1, cache=FirstBlockCache(), **SIZE).resolve(klein)
    assert raised.value.param == "cache"
    GenerationRequest(PROMPT, steps=1, cache=TaylorSeer(), **SIZE).resolve(klein)  # FLUX.2 takes TaylorSeer


@pytest.mark.slow
def test_first_block_cache_without_cfg_and_the_image_change(tiny_flux, parts):
    from diffusers.hooks import FirstBlockCacheConfig

    threshold, steps = 0.3, 10
    reference = _flux_reference(tiny_flux["dev"], FirstBlockCacheConfig(threshold=threshold))
    expected = _run(reference, parts, steps)
    settings = {"steps": steps, "seed": 1, "guidance_scale": GUIDANCE, **SIZE}
    got = parts.generate(PROMPT, cache=FirstBlockCache(threshold), **settings)
    assert_same_image(got.array, expected)
    assert len(got.full_steps["cond"]) < steps
    plain = parts.generate(PROMPT, **settings).array
    # the skipped steps changed the image far beyond the engines' ~1e-6 (1.75/255 measured)
    assert np.abs(plain - got.array).max() > MAX_PIXEL_ERROR / 4


@pytest.mark.slow
@pytest.mark.parametrize("guidance", [4.0, 1.0])
def test_taylorseer_equals_diffusers_on_flux2_klein(tiny_flux2_klein, exported_flux2_klein, guidance):
    import diffusers
    from diffusers.hooks import TaylorSeerCacheConfig

    ours = Pipeline.load(exported_flux2_klein)
    reference = diffusers.Flux2KleinPipeline.from_pretrained(tiny_flux2_klein)
    reference.set_progress_bar_config(disable=True)
    config = TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=2, max_order=2, use_lite_mode=True)
    reference.transformer.enable_cache(config)
    expected = reference(
        prompt=PROMPT,
        num_inference_steps=TAYLOR_STEPS,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(1),
        max_sequence_length=ours.manifest.flux2.max_sequence_length,
        output_type="np",
        **SIZE,
    ).images
    got = ours.generate(PROMPT, steps=TAYLOR_STEPS, seed=1, guidance_scale=guidance, cache=parse_cache(TAYLOR), **SIZE)
    assert_same_image(got.array, expected)
    assert set(got.full_steps) == ({"uncond", "cond"} if guidance > 1 else {"cond"})


@pytest.mark.slow
def test_export_cache_graphs_and_generate_without_torch(tiny_flux, tiny_flux2_klein, tmp_path):
    """`sdrt export --cache-graphs` writes the parts (FLUX.1 only) and `sdrt generate --cache`
    runs them torch-free, reporting the steps that ran in full."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from sdrt.export.exporter import ExportError, ExportOptions, export_model
    from sdrt.runtime.manifest import CACHE_GRAPHS

    with pytest.raises(ExportError, match="--cache-graphs is for FLUX.1"):
        export_model(str(tiny_flux2_klein), tmp_path / "klein", options=ExportOptions(cache_graphs=True))
    manifest = export_model(str(tiny_flux["dev"]), tmp_path / "dev", options=ExportOptions(cache_graphs=True))
    assert all(name in manifest.components for name in CACHE_GRAPHS)
    arguments = [
        "generate", PROMPT, "--model", str(tmp_path / "dev"), "--steps", "6", "--seed", "1", "--json",
        "--height", str(SIZE["height"]), "--width", str(SIZE["width"]), "--out", str(tmp_path / "a.png"),
        "--cache", "first-block:0.25",
    ]  # fmt: skip
    code = f"from sdrt.cli import main\nmain({arguments!r}, standalone_mode=False)\n"
    checker = Path(__file__).parent.parent / "no_heavy_imports.py"
    completed = subprocess.run([sys.executable, str(checker), code], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["parameters"]["cache"] == "first-block:0.25" and 0 < len(report["full_steps"]["cond"]) < 6


def test_first_block_cache_with_a_lora_is_one_line_naming_both(exported_flux_parts):
    from sdrt.runtime.features.combinations import REFUSED
    from sdrt.runtime.manifest import Manifest
    from sdrt.runtime.request import GenerationRequest

    request = GenerationRequest(PROMPT, steps=1, cache=FirstBlockCache(), loras=("style:0.5",), **SIZE)
    with pytest.raises(GenerationError) as raised:
        request.resolve(Manifest.load(exported_flux_parts))
    assert REFUSED[("lora", "first_block_cache")] in str(raised.value) and raised.value.param == "cache"
