"""torch's CUDA normal draws as A1111 emulates them in NumPy (modules/rng_philox.py, its "NV"
randn_source; sdrt's GPU source too): Philox4x32-10 counter-based words turned into normals.

- A generator holds a 64-bit seed (the Philox key: its low and high 32-bit words) and an offset
  that each `randn` call moves on by one.
- Value i of a call of n values comes from the block of counter (offset, 0, i, 0): its first
  two output words x, y give one normal by Box-Muller, sqrt(-2 log u) * sin(v) with
  u = (x + 1/2) / 2**32 and v = 2 pi (y + 1/2) / 2**32 (A1111's float32 constants, float64
  arithmetic, rounded to float32).

The block function is Philox4xW (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
2011) for W = 32 and 64, so it is checked word for word against NumPy's own Philox (4x64) bit
generator and the 4x32 known-answer vectors of Random123. That these normals equal torch's CUDA
`randn` for the same seed is A1111's claim; sdrt has not checked it on a GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ROUNDS = 10
HALF_WORD = 32
LOW_HALF = np.uint64(0xFFFFFFFF)
#: A1111's float32 constants: 1 / 2**32 and 2 pi / 2**32 (its rounding of 2 pi: 6.2831855).
TWO_POW32_INV = np.float32(2.3283064e-10)
TWO_PI_FLOAT32 = np.float32(6.2831855)
TWO_POW32_INV_2PI = np.float32(TWO_POW32_INV * TWO_PI_FLOAT32)


@dataclass(frozen=True)
class PhiloxWords:
    """Philox4xW's word size, round multipliers and key increments (Weyl constants)."""

    bits: int
    multipliers: tuple[int, int]
    weyl: tuple[int, int]


PHILOX_4X32 = PhiloxWords(32, (0xD2511F53, 0xCD9E8D57), (0x9E3779B9, 0xBB67AE85))
PHILOX_4X64 = PhiloxWords(64, (0xD2E7470EE14C6C93, 0xCA5A826395121157), (0x9E3779B97F4A7C15, 0xBB67AE8584CAA73B))


def _mulhilo(a: np.ndarray, m: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(high, low) words of a * m for W-bit words a (uint64 arrays) and multiplier m."""
    if bits == HALF_WORD:
        product = a * np.uint64(m)
        return product >> np.uint64(HALF_WORD), product & LOW_HALF
    shift = np.uint64(HALF_WORD)
    a_hi, a_lo = a >> shift, a & LOW_HALF
    m_hi, m_lo = np.uint64(m >> HALF_WORD), np.uint64(m & 0xFFFFFFFF)
    lo_lo, hi_lo, lo_hi, hi_hi = a_lo * m_lo, a_hi * m_lo, a_lo * m_hi, a_hi * m_hi
    middle = (lo_lo >> shift) + (hi_lo & LOW_HALF) + (lo_hi & LOW_HALF)
    high = hi_hi + (hi_lo >> shift) + (lo_hi >> shift) + (middle >> shift)
    low = (lo_lo & LOW_HALF) | ((middle & LOW_HALF) << shift)
    return high, low


def philox_block(counter: np.ndarray, key: np.ndarray, words: PhiloxWords = PHILOX_4X32) -> np.ndarray:
    """Philox4xW-10 of counters [4, n] and keys [2, n] (W-bit values in uint64): the output words [4, n]."""
    mask = np.uint64((1 << words.bits) - 1)
    c0, c1, c2, c3 = (np.asarray(row, dtype=np.uint64) & mask for row in counter)
    k0, k1 = (np.asarray(row, dtype=np.uint64) & mask for row in key)
    for round_index in range(ROUNDS):
        if round_index:
            k0, k1 = (k0 + np.uint64(words.weyl[0])) & mask, (k1 + np.uint64(words.weyl[1])) & mask
        hi0, lo0 = _mulhilo(c0, words.multipliers[0], words.bits)
        hi1, lo1 = _mulhilo(c2, words.multipliers[1], words.bits)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return np.stack([c0, c1, c2, c3])


def box_muller(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A1111's normal of two 32-bit words (its float32 constants, NumPy's float64 arithmetic)."""
    u = x.astype(np.float64) * np.float64(TWO_POW32_INV) + np.float64(TWO_POW32_INV / np.float32(2))
    v = y.astype(np.float64) * np.float64(TWO_POW32_INV_2PI) + np.float64(TWO_POW32_INV_2PI / np.float32(2))
    return (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32)


class PhiloxGenerator:
    """A seeded generator whose `randn` draws what A1111's rng_philox.Generator draws."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.offset = 0

    def randn(self, shape) -> np.ndarray:
        shape = tuple(int(s) for s in shape)
        count = math.prod(shape)
        seed = self.seed % (1 << 64)
        counter = np.zeros((4, count), dtype=np.uint64)
        counter[0] = self.offset
        counter[2] = np.arange(count, dtype=np.uint64)
        key = np.array([[seed & 0xFFFFFFFF], [seed >> HALF_WORD]], dtype=np.uint64).repeat(count, axis=1)
        self.offset += 1
        words = philox_block(counter, key)
        return box_muller(words[0], words[1]).reshape(shape)
