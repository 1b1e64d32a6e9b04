"""The SDE samplers' noise: torchsde's `BrownianTree` (what k-diffusion's
BrownianTreeNoiseSampler queries, one tree per image seed in A1111) reproduced in NumPy.

A tree over [t0, t1] draws the whole increment W from its seed; an interval's two halves
split their parent's increment by a Brownian bridge (mean in proportion to length, variance
left * right / length) with one normal draw from the parent's own seed. Seeds come from NumPy's
SeedSequence(entropy=seed, spawn_key=(key, depth)), key the interval's path from the root
(left 0, right 1); the draws are torch's CPU normals of that seed (sdrt.runtime.rng). Intervals
halve at their midpoints, rounded to the tolerance's digits, until a query's ends are interval
ends; a query's increment is the sum of the intervals that tile it, left to right. Every value
depends only on the seed and the interval, never on the order of the queries.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from sdrt.runtime.rng import GeneratorGroup, TorchGenerator
from sdrt.runtime.rng_philox import PhiloxGenerator

#: torchsde BrownianTree's defaults (k-diffusion passes none): search tolerance, entropy pool.
TOLERANCE = 1e-6
POOL_SIZE = 24
#: SeedSequence words a split uses (W, H, and two Levy-area seeds; only W's is drawn from here).
SPLIT_WORDS = 4
ROOT_WORDS = 3


class BrownianTree:
    """Increments W(ta, tb) of one Brownian motion of `shape` over [t0, t1], from `seed`."""

    def __init__(self, shape: tuple[int, ...], t0: float, t1: float, seed: int, kind: type = TorchGenerator):
        self.shape, self.seed = tuple(shape), int(seed)
        self.kind = kind  # the generator of its normals: torch's CPU one, or the CUDA one's emulation
        self.digits = -int(math.log10(TOLERANCE))
        self.start, self.end = self._round(t0), self._round(t1)
        root_seed = np.random.SeedSequence(entropy=self.seed, pool_size=POOL_SIZE).generate_state(ROOT_WORDS)[0]
        root = self._randn(root_seed) * np.float32(math.sqrt(t1 - t0))
        # (start, end, key, depth) -> the interval's increment.
        self._increments: dict[tuple[float, float, int, int], np.ndarray] = {(self.start, self.end, 0, 0): root}

    def _round(self, value: float) -> float:
        return round(float(value), self.digits)

    def _randn(self, seed) -> np.ndarray:
        return self.kind(int(seed)).randn(self.shape)

    def _split_seed(self, key: int, depth: int) -> int:
        sequence = np.random.SeedSequence(entropy=self.seed, spawn_key=(key, depth), pool_size=POOL_SIZE)
        return int(sequence.generate_state(SPLIT_WORDS)[0])

    def _children(self, node, parent_w):
        start, end, key, depth = node
        middle = self._round(0.5 * (end + start))
        left_diff, right_diff = middle - start, end - middle
        reciprocal = 1 / (end - start)
        noise = self._randn(self._split_seed(key, depth))
        mean = np.float32(left_diff) * parent_w * np.float32(reciprocal)
        left_w = mean + np.float32(math.sqrt(left_diff * right_diff * reciprocal)) * noise
        left = (start, middle, 2 * key, depth + 1)
        right = (middle, end, 2 * key + 1, depth + 1)
        self._increments[left], self._increments[right] = left_w, parent_w - left_w
        return left, right

    def _tiles(self, ta: float, tb: float) -> list:
        tiles, pending = [], [((self.start, self.end, 0, 0), ta, tb)]
        while pending:
            node, a, b = pending.pop()
            start, end = node[0], node[1]
            if a == start and b == end:
                tiles.append(node)
                continue
            left, right = self._children(node, self._increments[node])
            middle = left[1]
            if b <= middle:
                pending.append((left, a, b))
            elif a >= middle:
                pending.append((right, a, b))
            else:  # the right part is popped after the left one
                pending += [(right, middle, b), (left, a, middle)]
        return tiles

    def __call__(self, ta: float, tb: float) -> np.ndarray:
        """W(tb) - W(ta) for t0 <= ta <= tb <= t1 (clamped to the tree's interval)."""
        ta = min(max(float(ta), self.start), self.end)
        tb = min(max(float(tb), self.start), self.end)
        if ta == tb:
            return np.zeros(self.shape, dtype=np.float32)
        tiles = self._tiles(self._round(ta), self._round(tb))
        total = self._increments[tiles[0]]
        for tile in tiles[1:]:
            total = total + self._increments[tile]
        return total


def brownian_noise(
    x: np.ndarray, sigmas: np.ndarray, generator: Callable[[], TorchGenerator | GeneratorGroup | None]
) -> Callable[[float, float], np.ndarray]:
    """k-diffusion's BrownianTreeNoiseSampler over the schedule's positive sigma range: one tree
    per image seed for a group of one generator per image (A1111's per-image seeds), one tree
    for the whole batch from a single generator's seed (ComfyUI's). The trees are made on the
    first draw, from the generator the loop passes."""
    sigma_min, sigma_max = float(sigmas[sigmas > 0].min()), float(sigmas.max())
    trees: list[BrownianTree] = []

    def draw(sigma: float, sigma_next: float) -> np.ndarray:
        if not trees:
            source = generator()
            if isinstance(source, GeneratorGroup) and source.rows_each == 1:
                trees.extend(
                    BrownianTree(x.shape[1:], sigma_min, sigma_max, g.seed, type(g)) for g in source.generators
                )
            elif isinstance(source, (TorchGenerator, PhiloxGenerator)):
                trees.append(BrownianTree(x.shape, sigma_min, sigma_max, source.seed, type(source)))
            else:
                raise ValueError("the SDE samplers need one generator, or one per image, for their Brownian trees")
        low, high = min(sigma, sigma_next), max(sigma, sigma_next)
        sign = -1 if sigma > sigma_next else 1
        increments = [tree(low, high) for tree in trees]
        w = np.stack(increments) if len(trees) > 1 or trees[0].shape != x.shape else increments[0]
        scale = np.sqrt(np.abs(np.float32(sigma_next) - np.float32(sigma)))
        return (w * np.float32(sign) / scale).astype(np.float32)

    return draw
