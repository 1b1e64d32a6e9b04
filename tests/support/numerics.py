"""Tolerances derived from float32 arithmetic, the same on every CPU.

Two float32 implementations of one sampler (sdrt's NumPy code and diffusers' torch code) each
round every operation to the nearest float32: an error of at most u = 2**-24 relative to the
value rounded. The values a sampler step rounds are bounded by the largest sample magnitude at
that step, so one call adds at most ROUNDINGS_PER_CALL * u * max|x_i| per implementation. The
initial noise and every ancestral draw also differ by sdrt.runtime.rng's documented bound
(RNG_RELATIVE of the value drawn, which the sample magnitude bounds too). Samplers contract
errors from earlier steps (each step scales the sample by sigma_next / sigma <= 1 plus the
model's dependence on it, whose slope the tests' stand-in model keeps below 0.7), but a
multistep update re-uses earlier predictions with weights whose magnitudes add up to at most
GROWTH (LMS's four weights, UniPC's order-3 rhos, Heun's averaged slopes), so one difference
can be counted up to GROWTH times. The difference after a whole loop is then bounded by:

    |ours - reference| <= GROWTH * (2 * ROUNDINGS_PER_CALL * u + RNG_RELATIVE) * sum_i max|x_i|

This scales with the trajectory's magnitudes: a zero-terminal-SNR schedule starts at
sigma ~ 4096, where one float32 ulp of the sample is ~1e-3, and an error measured relative to
the final sample (~1) would be a bound on one machine's luck rather than on the arithmetic.
On an AMD EPYC (AVX2) the largest error in tests/runtime/test_samplers.py was 8% of this bound (UniPC
of order 3, 4 steps), while a wrong coefficient (a 3e-3 relative slip in one of ten sigmas)
exceeds it.
"""

from __future__ import annotations

import numpy as np

UNIT_ROUNDOFF = 2.0**-24  # float32
#: More than the rounded operations any sdrt sampler applies to an element per UNet call (the
#: longest, UniPC of order 3 and LMS of order 4, round about 15 times).
ROUNDINGS_PER_CALL = 16
#: sdrt.runtime.rng's vectorized normals are within 1e-6 (relative) of torch's on any CPU.
RNG_RELATIVE = 1e-6
#: How many times a multistep update can count one earlier difference (see above).
GROWTH = 4


def loop_bound(magnitudes, seeded: bool = True) -> float:
    """The largest difference two float32 runs of a sampler may show, from the largest
    |sample| before each UNet call and after the last (see the module docstring). `seeded`:
    each side drew its noise from its own generator (otherwise both start from one array)."""
    per_call = 2 * ROUNDINGS_PER_CALL * UNIT_ROUNDOFF + (RNG_RELATIVE if seeded else 0.0)
    return GROWTH * per_call * float(np.sum(magnitudes))


def assert_within_loop_bound(got: np.ndarray, expected: np.ndarray, magnitudes, seeded: bool = True) -> None:
    assert np.isfinite(got).all()
    error, bound = float(np.abs(got - expected).max()), loop_bound(magnitudes, seeded)
    assert error <= bound, f"max difference {error:.3g} exceeds the float32 bound {bound:.3g}"
