"""PyTorch's CPU normal sampling in NumPy, so a seed gives the same latents as diffusers.

`TorchGenerator(seed).randn(shape)` reproduces
`torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))`:

- the engine is MT19937 seeded like PyTorch (seed mod 2**32, Knuth's initializer), run by
  NumPy's own MT19937 bit generator from that state;
- tensors of 16 or more values (PyTorch's vectorized path): every value first gets a uniform
  from one 32-bit draw (its low 24 bits / 2**24); then each block of 16 becomes normals by
  Box-Muller, the first 8 as u1 and the last 8 as u2; when the count is not a multiple of 16,
  the last 16 values are drawn again and transformed again;
- smaller tensors (the scalar path): double-precision Box-Muller from two 53-bit uniforms
  (each of two 32-bit draws), the sine half cached in the generator for its next value.

The scalar path is bit-exact. In the vectorized path PyTorch evaluates log, sin and cos with
SIMD approximations that depend on the CPU (Sleef on AVX2/AVX-512); sdrt rounds exact float64
values instead, which is the same on every machine and within 1e-6 of PyTorch (a few float32
ulp; tests/runtime/test_rng.py checks both).
"""

from __future__ import annotations

import math

import numpy as np

MT_STATE_SIZE = 624
MT_INIT_MULTIPLIER = 1812433253
UINT32_MASK = 0xFFFFFFFF
FLOAT_DIGITS = 24  # float32 mantissa bits, incl. the implicit one
DOUBLE_DIGITS = 53
VECTOR_BLOCK = 16  # PyTorch's normal_fill block: 8 (u1, u2) pairs
HALF_BLOCK = VECTOR_BLOCK // 2


class TorchGenerator:
    """A seeded generator whose `randn` matches torch's CPU generator, call after call."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        key = np.empty(MT_STATE_SIZE, dtype=np.uint32)
        value = self.seed & UINT32_MASK
        key[0] = value
        for index in range(1, MT_STATE_SIZE):
            value = (MT_INIT_MULTIPLIER * (value ^ (value >> 30)) + index) & UINT32_MASK
            key[index] = value
        self._bits = np.random.MT19937()
        self._bits.state = {"bit_generator": "MT19937", "state": {"key": key, "pos": MT_STATE_SIZE}}
        self._cached_normal: float | None = None

    def _uniform_float32(self, count: int) -> np.ndarray:
        raw = self._bits.random_raw(count).astype(np.uint32)
        return (raw & ((1 << FLOAT_DIGITS) - 1)).astype(np.float32) * np.float32(2.0**-FLOAT_DIGITS)

    def _uniform_double(self) -> float:
        high, low = (int(v) for v in self._bits.random_raw(2))
        return (((high << 32) | low) & ((1 << DOUBLE_DIGITS) - 1)) * 2.0**-DOUBLE_DIGITS

    def _normal_double(self) -> float:
        if self._cached_normal is not None:
            value, self._cached_normal = self._cached_normal, None
            return value
        u1 = self._uniform_double()
        u2 = self._uniform_double()
        radius = math.sqrt(-2.0 * math.log1p(-u2))
        theta = 2.0 * math.pi * u1
        self._cached_normal = radius * math.sin(theta)
        return radius * math.cos(theta)

    @staticmethod
    def _box_muller_blocks(blocks: np.ndarray) -> None:
        """In place: rows of 16 uniforms become 16 normals (float32 arithmetic as PyTorch)."""
        u1 = np.float32(1.0) - blocks[:, :HALF_BLOCK]
        u2 = blocks[:, HALF_BLOCK:]
        radius = np.sqrt(np.float32(-2.0) * np.log(u1.astype(np.float64)).astype(np.float32))
        theta = (np.float32(2.0 * math.pi) * u2).astype(np.float64)
        blocks[:, :HALF_BLOCK] = radius * np.cos(theta).astype(np.float32)
        blocks[:, HALF_BLOCK:] = radius * np.sin(theta).astype(np.float32)

    def randn(self, shape: tuple[int, ...] | list[int]) -> np.ndarray:
        """Standard normal float32 values of `shape`, as torch.randn draws them."""
        shape = tuple(int(s) for s in shape)
        count = math.prod(shape)
        if count < VECTOR_BLOCK:
            values = np.array([self._normal_double() for _ in range(count)], dtype=np.float32)
            return values.reshape(shape)
        data = self._uniform_float32(count)
        whole = count - count % VECTOR_BLOCK
        self._box_muller_blocks(data[:whole].reshape(-1, VECTOR_BLOCK))
        if count % VECTOR_BLOCK:
            tail = self._uniform_float32(VECTOR_BLOCK).reshape(1, VECTOR_BLOCK)
            self._box_muller_blocks(tail)
            data[count - VECTOR_BLOCK :] = tail[0]
        return data.reshape(shape)


class GeneratorGroup:
    """One generator per block of consecutive batch rows (diffusers' list of generators, one
    per prompt): `randn` gives each block the values its own generator would draw for a batch
    of just that block, so a prompt's images do not depend on what else is in the batch."""

    def __init__(self, generators: list[TorchGenerator], rows_each: int):
        if not generators or rows_each < 1:
            raise ValueError("a generator group needs generators and at least one row each")
        self.generators = generators
        self.rows_each = int(rows_each)

    def randn(self, shape: tuple[int, ...] | list[int]) -> np.ndarray:
        shape = tuple(int(s) for s in shape)
        rows = len(self.generators) * self.rows_each
        if not shape or shape[0] != rows:
            raise ValueError(f"this generator group draws batches of {rows} rows, asked for {list(shape)}")
        block = (self.rows_each, *shape[1:])
        return np.concatenate([generator.randn(block) for generator in self.generators])


class IndexedDraws:
    """ComfyUI's prepare_noise for a latent with a `batch_index` (LatentFromBatch,
    RepeatLatentBatch): one generator draws one image's noise at a time for every index from 0
    to the largest, in order, and row k takes the draw of index k; so an image taken from a
    batch gets the noise it had in the whole batch."""

    def __init__(self, generator, indices: tuple[int, ...]):
        if not indices or min(indices) < 0:
            raise ValueError("batch indices must be a non-empty list of non-negative whole numbers")
        self.generator = generator
        self.indices = tuple(int(i) for i in indices)

    def randn(self, shape: tuple[int, ...] | list[int]) -> np.ndarray:
        shape = tuple(int(s) for s in shape)
        if not shape or shape[0] != len(self.indices):
            raise ValueError(f"these batch indices draw {len(self.indices)} rows, asked for {list(shape)}")
        wanted, draws = set(self.indices), {}
        for index in range(max(self.indices) + 1):
            draw = self.generator.randn((1, *shape[1:]))
            if index in wanted:  # the draws no row takes are discarded, as ComfyUI's are
                draws[index] = draw
        return np.concatenate([draws[index] for index in self.indices])
