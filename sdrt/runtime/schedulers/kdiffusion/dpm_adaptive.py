"""k-diffusion's adaptive DPM-Solver (`sample_dpm_adaptive`, A1111's "DPM adaptive", ComfyUI's
`dpm_adaptive`), as a solver coroutine (see solvers.py): from sigma_max down to sigma_min in
t = -log(sigma), each attempt a DPM-Solver-2 and a DPM-Solver-3 step over the same h (three
model calls, the first two shared), their difference against a tolerance the error a PID
controller accepts or rejects and sizes the next h from. With eta an ancestral step and fresh
noise after each accepted one.

Its model calls follow the model's outputs: only the first (at sigma_max) is known before the
run, so the sampler lays out each next call as the solver yields it (KDiffusionSampler.adaptive).
Scalars are float32 as k-diffusion's 0-d tensors; the controller's arithmetic is Python floats,
as k-diffusion's PIDStepSizeController."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sdrt.runtime.schedulers.kdiffusion.solvers import Noise, Solver

_f = np.float32

#: sample_dpm_adaptive's defaults (k_diffusion/sampling.py), which A1111 and ComfyUI keep.
ORDER = 3
RTOL = 0.05
ATOL = 0.0078
H_INIT = 0.05
PCOEFF, ICOEFF, DCOEFF = 0.0, 1.0, 0.0
ACCEPT_SAFETY = 0.81
#: The controller's order with eta (k-diffusion: 1.5), and its guard against a zero error.
ANCESTRAL_ORDER = 1.5
ERROR_EPS = 1e-8
#: The loop ends this close (in t) to t_end.
END_TOLERANCE = 1e-5
#: The intermediate points of the 2- and 3-stage steps (DPM-Solver-23: r1 = 1/3 for both).
R1, R2 = 1 / 3, 2 / 3


@dataclass
class StepSizeController:
    """k-diffusion's PIDStepSizeController: h, its coefficients over the controller's order, the
    last inverse errors."""

    h: float
    order: float
    pcoeff: float = PCOEFF
    icoeff: float = ICOEFF
    dcoeff: float = DCOEFF
    accept_safety: float = ACCEPT_SAFETY

    def __post_init__(self):
        self.b1 = (self.pcoeff + self.icoeff + self.dcoeff) / self.order
        self.b2 = -(self.pcoeff + 2 * self.dcoeff) / self.order
        self.b3 = self.dcoeff / self.order
        self.errors: list[float] = []

    def propose(self, error: float) -> bool:
        """Whether the step of this error is accepted; h becomes the next attempt's."""
        inverse = 1 / (error + ERROR_EPS)
        if not self.errors:
            self.errors = [inverse, inverse, inverse]
        self.errors[0] = inverse
        factor = self.errors[0] ** self.b1 * self.errors[1] ** self.b2 * self.errors[2] ** self.b3
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errors[2], self.errors[1] = self.errors[1], self.errors[0]
        self.h *= factor
        return accept


def _sigma(t) -> np.float32:
    return np.exp(-_f(t))


def _sigma_down(sigma_from: np.float32, sigma_to: np.float32, eta: float) -> np.float32:
    """get_ancestral_step's sigma_down, in float32 as on k-diffusion's 0-d tensors."""
    up = min(sigma_to, _f(eta) * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** _f(0.5))
    return (sigma_to**2 - up**2) ** _f(0.5)


def dpm_adaptive(
    x,
    sigmas,
    noise: Noise,
    sigma_min: float,
    sigma_max: float,
    eta: float = 0.0,
    s_noise: float = 1.0,
    rtol: float = RTOL,
    atol: float = ATOL,
    h_init: float = H_INIT,
) -> Solver:
    t_start, t_end = -np.log(_f(sigma_max)), -np.log(_f(sigma_min))
    controller = StepSizeController(abs(h_init), ANCESTRAL_ORDER if eta else ORDER)
    atol32, rtol32 = _f(atol), _f(rtol)
    s, x_prev = t_start, x

    def eps_at(x_at, t):
        denoised = yield x_at, float(_sigma(t))
        return (x_at - denoised) / _sigma(t)

    while s < t_end - _f(END_TOLERANCE):
        t = min(t_end, s + _f(controller.h))
        if eta:
            t_to = min(t_end, -np.log(_sigma_down(_sigma(s), _sigma(t), eta)))
            up = (_sigma(t) ** 2 - _sigma(t_to) ** 2) ** _f(0.5)
        else:
            t_to, up = t, _f(0)
        h = _f(t_to - s)
        eps = yield from eps_at(x, s)
        s1, s2 = s + _f(R1) * h, s + _f(R2) * h
        u1 = x - _sigma(s1) * np.expm1(_f(R1) * h) * eps
        eps_r1 = yield from eps_at(u1, s1)
        base = x - _sigma(t_to) * np.expm1(h) * eps
        x_low = base - _sigma(t_to) / _f(2 * R1) * np.expm1(h) * (eps_r1 - eps)
        ratio = np.expm1(_f(R2) * h) / (_f(R2) * h) - _f(1)
        u2 = x - _sigma(s2) * np.expm1(_f(R2) * h) * eps - _sigma(s2) * _f(R2 / R1) * ratio * (eps_r1 - eps)
        eps_r2 = yield from eps_at(u2, s2)
        x_high = base - _sigma(t_to) / _f(R2) * (np.expm1(h) / h - _f(1)) * (eps_r2 - eps)
        delta = np.maximum(atol32, rtol32 * np.maximum(np.abs(x_low), np.abs(x_prev)))
        error = np.linalg.norm(((x_low - x_high) / delta).ravel()) / _f(x.size**0.5)
        if controller.propose(float(error)):
            x_prev = x_low
            x = x_high
            if up:
                x = x + up * _f(s_noise) * noise(float(_sigma(s)), float(_sigma(t)))
            s = t
    return x
