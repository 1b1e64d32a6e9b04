"""k-diffusion's DPM-Solver-Fast (`sample_dpm_fast`, A1111's "DPM fast"), as a solver coroutine
(see solvers.py): fixed steps evenly spaced in t = -log(sigma) between the model's sigma range,
of orders 3, 3, ..., then 2 and 1 (or the remainder), n model calls in all; with eta an
ancestral step and fresh noise after each. Scalars are float32 as k-diffusion's 0-d tensors."""

from __future__ import annotations

import math

import numpy as np

from sdrt.runtime.schedulers.kdiffusion.solvers import Noise, Solver, ancestral_step
from sdrt.runtime.schedulers.tables import linspace_float32

#: The orders of DPM-Solver-Fast's steps, and the intermediate points of its 2- and 3-stage steps.
THIRD_ORDER = 3
SECOND_ORDER_R1 = 0.5
THIRD_ORDER_R1, THIRD_ORDER_R2 = 1 / 3, 2 / 3

_f = np.float32


def _sigma(t) -> np.float32:
    return np.exp(-_f(t))


def dpm_fast(
    x, sigmas, noise: Noise, sigma_min: float, sigma_max: float, n: int, eta: float = 1.0, s_noise=1.0
) -> Solver:
    t_start, t_end = -np.log(_f(sigma_max)), -np.log(_f(sigma_min))
    steps = math.floor(n / THIRD_ORDER) + 1
    ts = linspace_float32(float(t_start), float(t_end), steps + 1)
    if n % THIRD_ORDER == 0:
        orders = [THIRD_ORDER] * (steps - 2) + [2, 1]
    else:
        orders = [THIRD_ORDER] * (steps - 1) + [n % THIRD_ORDER]

    def eps_at(x_at, t):
        denoised = yield x_at, float(_sigma(t))
        return (x_at - denoised) / _sigma(t)

    for i, order in enumerate(orders):
        t, t_next = ts[i], ts[i + 1]
        if eta:
            down, _ = ancestral_step(float(_sigma(t)), float(_sigma(t_next)), eta)
            t_to = min(t_end, -np.log(_f(down)))
            up = (_sigma(t_next) ** 2 - _sigma(t_to) ** 2) ** _f(0.5)
        else:
            t_to, up = t_next, _f(0)
        h = _f(t_to - t)
        eps = yield from eps_at(x, t)
        if order == 1:
            x = x - _sigma(t_to) * np.expm1(h) * eps
        elif order == 2:
            r1 = _f(SECOND_ORDER_R1)
            s1 = t + r1 * h
            u1 = x - _sigma(s1) * np.expm1(r1 * h) * eps
            eps_r1 = yield from eps_at(u1, s1)
            x = x - _sigma(t_to) * np.expm1(h) * eps - _sigma(t_to) / (2 * r1) * np.expm1(h) * (eps_r1 - eps)
        else:
            r1, r2 = _f(THIRD_ORDER_R1), _f(THIRD_ORDER_R2)
            s1, s2 = t + r1 * h, t + r2 * h
            u1 = x - _sigma(s1) * np.expm1(r1 * h) * eps
            eps_r1 = yield from eps_at(u1, s1)
            u2 = (
                x
                - _sigma(s2) * np.expm1(r2 * h) * eps
                - _sigma(s2) * (r2 / r1) * (np.expm1(r2 * h) / (r2 * h) - 1) * (eps_r1 - eps)
            )
            eps_r2 = yield from eps_at(u2, s2)
            x = x - _sigma(t_to) * np.expm1(h) * eps - _sigma(t_to) / r2 * (np.expm1(h) / h - 1) * (eps_r2 - eps)
        x = x + up * _f(s_noise) * noise(float(_sigma(t)), float(_sigma(t_next)))
    return x
