"""The quantile function of the beta distribution (scipy.stats.beta.ppf), in NumPy, for A1111's
"Beta" schedule: the regularized incomplete beta function by its continued fraction (modified
Lentz), inverted by bisection to double precision."""

from __future__ import annotations

import math

#: Continued-fraction terms evaluated at most, and the relative change that ends the fraction.
MAX_TERMS = 300
TOLERANCE = 1e-15
#: Smallest magnitude a Lentz denominator is allowed (avoids division by zero).
TINY = 1e-300
#: Bisection halvings: enough to pin a value in [0, 1] to the last bit of a double.
BISECTIONS = 64


def _fraction(x: float, a: float, b: float) -> float:
    """The continued fraction of I_x(a, b), for x < (a + 1) / (a + b + 2)."""
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > TINY else TINY)
    result = d
    for m in range(1, MAX_TERMS + 1):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > TINY else TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > TINY else TINY
            result *= c * d
        if abs(c * d - 1.0) < TOLERANCE:
            break
    return result


def regularized_incomplete_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the beta distribution's CDF at x."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _fraction(x, a, b) / a
    return 1.0 - math.exp(log_front) * _fraction(1.0 - x, b, a) / b


def beta_quantile(q: float, a: float, b: float) -> float:
    """The x with I_x(a, b) = q (scipy.stats.beta.ppf(q, a, b))."""
    if q <= 0:
        return 0.0
    if q >= 1:
        return 1.0
    low, high = 0.0, 1.0
    for _ in range(BISECTIONS):
        middle = (low + high) / 2
        if regularized_incomplete_beta(middle, a, b) < q:
            low = middle
        else:
            high = middle
    return (low + high) / 2
