"""A request's seeds, as GenerationRequest gives them: one for every image (diffusers' one
generator for the batch), one per prompt, or one per image (`seeds`: A1111's seed + i, each
image reproducible alone). sdrt.runtime.compose gives each seed a generator (sdrt.runtime.rng)."""

from __future__ import annotations

import random

import numpy as np

from sdrt.errors import GenerationError

#: PyTorch's CPU generator keeps the low 32 bits of a seed.
MAX_SEED = 2**32 - 1


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def consecutive_seeds(seed: int, count: int) -> list[int]:
    """A1111's seeds for `count` images: seed, seed + 1, ... (PyTorch keeps a seed's low 32 bits)."""
    return [(int(seed) + index) % (MAX_SEED + 1) for index in range(count)]


def draw_seed() -> int:
    """A seed for a request that gives none (reported, so its images can be made again)."""
    return random.SystemRandom().randint(0, MAX_SEED)


def seeds_for(seed: int | None, count: int) -> list[int]:
    """The `seeds` of `count` images from one seed (drawn when None), as A1111 numbers them."""
    return consecutive_seeds(draw_seed() if seed is None else seed, count)


def image_seeds(seed, seeds, batch: int) -> list[int]:
    """The request's `seeds` checked: one per image, and no `seed` beside them."""
    if seed is not None:
        raise GenerationError("give seed or seeds (one per image), not both", "seeds")
    if not isinstance(seeds, (list, tuple, np.ndarray)) or len(seeds) != batch:
        count = len(seeds) if isinstance(seeds, (list, tuple, np.ndarray)) else "no list of"
        raise GenerationError(f"seeds must be one seed per image: {count} seeds for {batch} images", "seeds")
    for value in seeds:
        if not _is_int(value) or not 0 <= value <= MAX_SEED:
            raise GenerationError(f"seeds must be integers from 0 to {MAX_SEED}, got {value!r}", "seeds")
    return [int(value) for value in seeds]


def request_seeds(seed, prompts: int) -> tuple[list[int], bool]:
    """The request's `seed` checked (drawn when None), and whether it is a list (one per prompt)."""
    seed = seed if seed is not None else draw_seed()
    per_prompt = isinstance(seed, (list, tuple, np.ndarray))
    seeds = list(seed) if per_prompt else [seed]
    for value in seeds:
        if not _is_int(value) or not 0 <= value <= MAX_SEED:
            raise GenerationError(f"seed must be an integer from 0 to {MAX_SEED}, got {value!r}", "seed")
    if per_prompt and len(seeds) != prompts:
        raise GenerationError(f"seed has {len(seeds)} entries for {prompts} prompts", "seed")
    return [int(value) for value in seeds], per_prompt
