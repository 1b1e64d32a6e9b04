"""A1111's noise settings against its rules, written here from A1111's modules/rng.py (ImageRNG:
variation seeds' slerp, seed resize's centred paste, ENSD's generators), processing.py (the
seeds of a variation batch) and rng_philox.py (the NV source), independently of sdrt: torch's
CPU generator (CPU) or a plain-integer Philox4x32-10 written below (NV), driving
k_diffusion.sampling over diffusers' tiny UNet."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_kdiffusion import assert_same_image

from conftest import diffusers_pipeline
from sdrt.runtime.a1111_noise import A1111Noise, a1111_initial_noise
from sdrt.runtime.pipeline import Pipeline
from sdrt.runtime.rng import GeneratorGroup, TorchGenerator
from sdrt.runtime.rng_philox import PHILOX_4X32, PHILOX_4X64, PhiloxGenerator, philox_block
from support.kdiffusion_reference import denoiser, k_sampling

PROMPT = "a photo of a cat"
GUIDANCE = 7.5
STEPS = 4
SHAPE = (4, 8, 8)  # the tiny model's latents for 64x64
MASK32 = 0xFFFFFFFF


# ------------------------------------------------------------------ A1111's rules, independently
def a1111_slerp(val, low, high):
    """rng.slerp, as A1111 writes it."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


class CpuSource:
    """randn_source CPU: a fresh torch CPU generator per seed."""

    @staticmethod
    def generator(seed):
        return torch.Generator("cpu").manual_seed(seed)

    @staticmethod
    def draw(generator, shape):
        return torch.randn(shape, generator=generator)


def philox_words(counter, key):
    """Philox4x32-10 on Python integers (Salmon et al. 2011; Random123's philox4x32)."""
    c, k = list(counter), list(key)
    for round_index in range(10):
        if round_index:
            k = [(k[0] + 0x9E3779B9) & MASK32, (k[1] + 0xBB67AE85) & MASK32]
        p0, p1 = c[0] * 0xD2511F53, c[2] * 0xCD9E8D57
        c = [(p1 >> 32) ^ c[1] ^ k[0], p1 & MASK32, (p0 >> 32) ^ c[3] ^ k[1], p0 & MASK32]
    return c


class NvGenerator:
    """rng_philox.Generator: value i of call `offset` from counter (offset, 0, i, 0), key = the seed's words."""

    def __init__(self, seed):
        self.seed, self.offset = seed, 0

    def randn(self, shape):
        n = int(np.prod(shape))
        words = [philox_words((self.offset, 0, i, 0), (self.seed & MASK32, self.seed >> 32)) for i in range(n)]
        self.offset += 1
        x = np.array([w[0] for w in words], np.uint32)
        y = np.array([w[1] for w in words], np.uint32)
        inv = np.array([2.3283064e-10], np.float32)
        inv_2pi = np.array([2.3283064e-10 * 6.2831855], np.float32)
        u, v = x * inv + inv / 2, y * inv_2pi + inv_2pi / 2  # NumPy promotes uint32 * float32 to float64
        return torch.asarray((np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32)).reshape(shape)


class NvSource:
    generator = NvGenerator

    @staticmethod
    def draw(generator, shape):
        return generator.randn(shape)


def image_rng_first(source, seeds, subseeds, strength, resize_from, ensd):
    """ImageRNG.first: (initial noise [batch, c, h, w], the generators of the sampler's noise)."""
    generators = [source.generator(seed) for seed in seeds]
    noise_shape = SHAPE if resize_from is None else (SHAPE[0], resize_from[1] // 8, resize_from[0] // 8)
    xs = []
    for i, (seed, generator) in enumerate(zip(seeds, generators)):
        subnoise = source.draw(source.generator(subseeds[i]), noise_shape) if strength else None
        if noise_shape != SHAPE:
            noise = source.draw(source.generator(seed), noise_shape)
        else:
            noise = source.draw(generator, SHAPE)
        if subnoise is not None:
            noise = a1111_slerp(strength, noise, subnoise)
        if noise_shape != SHAPE:
            x = source.draw(generator, SHAPE)
            dx, dy = (SHAPE[2] - noise_shape[2]) // 2, (SHAPE[1] - noise_shape[1]) // 2
            w = noise_shape[2] if dx >= 0 else noise_shape[2] + 2 * dx
            h = noise_shape[1] if dy >= 0 else noise_shape[1] + 2 * dy
            tx, ty = (0 if dx < 0 else dx), (0 if dy < 0 else dy)
            dx, dy = max(-dx, 0), max(-dy, 0)
            x[:, ty : ty + h, tx : tx + w] = noise[:, dy : dy + h, dx : dx + w]
            noise = x
        xs.append(noise)
    if ensd:
        generators = [source.generator(seed + ensd) for seed in seeds]
    return torch.stack(xs), generators


class SamplerNoise:
    """TorchHijack.randn_like -> ImageRNG.next: each image's next draw from its generator."""

    def __init__(self, source, generators):
        self.source, self.generators = source, generators

    def __getattr__(self, item):
        if item == "randn_like":
            return lambda x: torch.stack([self.source.draw(g, SHAPE) for g in self.generators])
        return getattr(torch, item)


@torch.no_grad()
def a1111_euler_a(pipe, source, seeds, subseeds=(), strength=0.0, resize_from=None, ensd=0):
    ks = k_sampling()
    cond, uncond = pipe.encode_prompt([PROMPT] * len(seeds), "cpu", 1, True, [""] * len(seeds))
    inner = denoiser(lambda x, t, context: pipe.unet(x, t, encoder_hidden_states=context).sample, pipe.scheduler.config)

    def cfg(x, sigma):
        c, u = inner(torch.cat([x, x]), torch.cat([sigma, sigma]), context=torch.cat([cond, uncond])).chunk(2)
        return u + (c - u) * GUIDANCE

    sigmas = inner.get_sigmas(STEPS)
    noise, generators = image_rng_first(source, seeds, subseeds, strength, resize_from, ensd)
    ks.torch = SamplerNoise(source, generators)
    try:
        latents = ks.sample_euler_ancestral(cfg, noise * sigmas[0], sigmas, disable=True)
    finally:
        ks.torch = torch
    image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


# ------------------------------------------------------------------ tests
@pytest.fixture(scope="module")
def standard(exported_tiny, tiny_models):
    reference = diffusers_pipeline("StableDiffusionPipeline", tiny_models["standard"])
    return Pipeline.load(exported_tiny("standard")), reference


@pytest.mark.parametrize("source, randn_source", [(CpuSource, "CPU"), (NvSource, "NV")], ids=["cpu", "nv"])
def test_variation_seed_resize_and_ensd_equal_a1111(standard, source, randn_source):
    ours, reference = standard
    seeds, subseeds, strength, resize_from, ensd = [21, 21], [5, 6], 0.3, (48, 80), 31337
    expected = a1111_euler_a(reference, source, seeds, subseeds, strength, resize_from, ensd)
    noise = A1111Noise(tuple(subseeds), strength, resize_from, ensd, randn_source)
    result = ours.generate(
        [PROMPT],
        seeds=seeds,
        num_images=2,
        steps=STEPS,
        guidance_scale=GUIDANCE,
        sampler="k_euler_a",
        a1111_noise=noise,
    )
    assert_same_image(result.array, expected)
    plain = a1111_euler_a(reference, source, seeds)
    assert np.abs(plain - expected).max() > 0.05  # the settings change the image
    from sdrt.runtime.imaging.png_info import format_parameters

    text = format_parameters(PROMPT, result.parameters, 2)
    assert "Variation seed: 6, Variation seed strength: 0.3, Seed resize from: 48x80, ENSD: 31337" in text
    assert ("RNG: CPU" in text) == (randn_source == "CPU") and "Seed: 21," in text


def test_near_parallel_noises_mix_linearly_as_a1111():
    """rng.slerp's linear branch (a variation seed equal to the seed): A1111 weighs the seed's
    noise by the strength there."""
    group = GeneratorGroup([TorchGenerator(7)], 1)
    got = a1111_initial_noise(A1111Noise((7,), 0.25), group, (1, *SHAPE), 64)
    expected, _ = image_rng_first(CpuSource, [7], [7], 0.25, None, 0)
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-6)


def test_variation_seeds_need_one_seed_per_image(standard):
    from sdrt.errors import GenerationError

    ours, _ = standard
    with pytest.raises(GenerationError) as caught:
        ours.generate(PROMPT, seed=1, num_images=2, steps=1, sampler="k_euler", a1111_noise=A1111Noise((3,), 0.5))
    assert caught.value.param == "subseed"


# ------------------------------------------------------------------ the Philox block function
KNOWN_ANSWERS = [  # Random123's kat_vectors for philox4x32-10: counter, key, output words
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((MASK32,) * 4, (MASK32,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),  # noqa: E501
]


@pytest.mark.parametrize("counter, key, words", KNOWN_ANSWERS)
def test_philox4x32_known_answers(counter, key, words):
    got = philox_block(np.array(counter, np.uint64)[:, None], np.array(key, np.uint64)[:, None], PHILOX_4X32)
    assert tuple(int(w) for w in got[:, 0]) == words == tuple(philox_words(counter, key))


def test_philox_block_equals_numpys_philox_bit_generator():
    """NumPy's Philox (4x64-10) gives block(counter + 1) first (it increments, then encrypts)."""
    rng = np.random.default_rng(3)
    for _ in range(4):
        counter = [int(v) for v in rng.integers(0, 2**63, 4)]
        key = [int(v) for v in rng.integers(0, 2**63, 2)]
        raw = np.random.Philox(counter=counter, key=key).random_raw(8)
        for block in range(2):
            ctr = np.array([counter[0] + 1 + block, *counter[1:]], np.uint64)[:, None]
            got = philox_block(ctr, np.array(key, np.uint64)[:, None], PHILOX_4X64)
            assert [int(w) for w in got[:, 0]] == [int(w) for w in raw[4 * block : 4 * block + 4]]


def test_philox_generator_equals_a1111s_nv_rule():
    ours, theirs = PhiloxGenerator(2**40 + 123), NvGenerator(2**40 + 123)
    for shape in ((3, 5), (17,)):  # each call moves the offset on
        np.testing.assert_array_equal(ours.randn(shape), theirs.randn(shape).numpy())
