"""k-diffusion's samplers (`k_diffusion.sampling.sample_*`, which A1111 and ComfyUI call), as
coroutines: each one is the sampler's loop, and where the original calls the model it yields
the sample and the noise level to evaluate, and receives the denoised prediction back. So the
loop's one model call per step drives them (sdrt.runtime.schedulers.kdiffusion.sampler), and
the noise levels of every call are known before the first (a dry run yields them).

`noise(sigma, sigma_next)` gives the sampler's fresh noise (A1111's per-image generators, or a
Brownian tree for the SDE samplers). Scalars are float64 Python numbers, arrays float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator

import numpy as np

from sdrt.runtime.schedulers.lms import lms_coefficients

#: A coroutine: yields (sample, sigma) to evaluate, is sent the denoised sample, returns the result.
Solver = Generator[tuple[np.ndarray, float], np.ndarray, np.ndarray]
Noise = Callable[[float, float], np.ndarray]
#: The greatest churn factor gamma (Karras et al.: sqrt(2) - 1).
MAX_GAMMA = 2**0.5 - 1
#: The order of k-diffusion's LMS.
LMS_ORDER = 4


def _f(value: float) -> np.float32:
    return np.float32(value)


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up): the level an ancestral step steps down to and the noise it adds."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    return (sigma_to**2 - sigma_up**2) ** 0.5, sigma_up


def _slope(x: np.ndarray, sigma: float, denoised: np.ndarray) -> np.ndarray:
    return (x - denoised) / _f(sigma)


def _churned(x, sigmas, i, churn, noise) -> tuple[np.ndarray, float]:
    """Karras et al.'s churn (s_churn, s_tmin, s_tmax, s_noise): (the sample, sigma_hat)."""
    s_churn, s_tmin, s_tmax, s_noise = churn
    sigma = float(sigmas[i])
    if not s_churn:
        return x, sigma  # k-diffusion draws (and drops) noise here even so: no draw changes nothing
    gamma = min(s_churn / (len(sigmas) - 1), MAX_GAMMA) if s_tmin <= sigma <= s_tmax else 0.0
    fresh = noise(sigma, sigma) * _f(s_noise)  # drawn every step, as k-diffusion does
    if gamma <= 0:
        return x, sigma
    sigma_hat = sigma * (gamma + 1)
    return x + fresh * _f((sigma_hat**2 - sigma**2) ** 0.5), sigma_hat


def euler(x, sigmas, noise: Noise, churn) -> Solver:
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churned(x, sigmas, i, churn, noise)
        denoised = yield x, sigma_hat
        x = x + _slope(x, sigma_hat, denoised) * _f(float(sigmas[i + 1]) - sigma_hat)
    return x


def euler_ancestral(x, sigmas, noise: Noise, eta: float = 1.0, s_noise: float = 1.0) -> Solver:
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = yield x, sigma
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        x = x + _slope(x, sigma, denoised) * _f(sigma_down - sigma)
        if sigma_next > 0:
            x = x + noise(sigma, sigma_next) * _f(s_noise) * _f(sigma_up)
    return x


def heun(x, sigmas, noise: Noise, churn) -> Solver:
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churned(x, sigmas, i, churn, noise)
        sigma_next = float(sigmas[i + 1])
        denoised = yield x, sigma_hat
        d = _slope(x, sigma_hat, denoised)
        dt = _f(sigma_next - sigma_hat)
        if sigma_next == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = yield x_2, sigma_next
            x = x + (d + _slope(x_2, sigma_next, denoised_2)) / _f(2) * dt
    return x


def _log_midpoint(a: float, b: float) -> float:
    return math.exp((math.log(a) + math.log(b)) / 2)


def dpm_2(x, sigmas, noise: Noise, churn) -> Solver:
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churned(x, sigmas, i, churn, noise)
        sigma_next = float(sigmas[i + 1])
        denoised = yield x, sigma_hat
        d = _slope(x, sigma_hat, denoised)
        if sigma_next == 0:
            x = x + d * _f(sigma_next - sigma_hat)
        else:
            sigma_mid = _log_midpoint(sigma_hat, sigma_next)
            x_2 = x + d * _f(sigma_mid - sigma_hat)
            denoised_2 = yield x_2, sigma_mid
            x = x + _slope(x_2, sigma_mid, denoised_2) * _f(sigma_next - sigma_hat)
    return x


def dpm_2_ancestral(x, sigmas, noise: Noise, eta: float = 1.0, s_noise: float = 1.0) -> Solver:
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = yield x, sigma
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        d = _slope(x, sigma, denoised)
        if sigma_down == 0:
            x = x + d * _f(sigma_down - sigma)
        else:
            sigma_mid = _log_midpoint(sigma, sigma_down)
            x_2 = x + d * _f(sigma_mid - sigma)
            denoised_2 = yield x_2, sigma_mid
            x = x + _slope(x_2, sigma_mid, denoised_2) * _f(sigma_down - sigma)
            x = x + noise(sigma, sigma_next) * _f(s_noise) * _f(sigma_up)
    return x


def lms(x, sigmas, noise: Noise) -> Solver:
    # k-diffusion integrates the Lagrange basis numerically (scipy quad); exactly here.
    coefficients = lms_coefficients(np.asarray(sigmas, dtype=np.float64), LMS_ORDER)
    slopes: list[np.ndarray] = []
    for i in range(len(sigmas) - 1):
        denoised = yield x, float(sigmas[i])
        slopes = [*slopes[-(LMS_ORDER - 1) :], _slope(x, float(sigmas[i]), denoised)]
        update = sum(float(c) * d for c, d in zip(coefficients[i], reversed(slopes)))
        x = x + update
    return x


def _exp_step(x, sigma: float, sigma_next: float, denoised) -> np.ndarray:
    """x at sigma_next by DPM-Solver++'s first-order step toward `denoised` (at sigma_next 0,
    where h is infinite, the step lands on `denoised`, as k-diffusion's arithmetic does)."""
    if sigma_next == 0:
        return np.float32(0) * x + denoised
    h = math.log(sigma) - math.log(sigma_next)
    return _f(sigma_next / sigma) * x - _f(math.expm1(-h)) * denoised


def dpmpp_2m(x, sigmas, noise: Noise) -> Solver:
    old_denoised = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = yield x, sigma
        if old_denoised is None or sigma_next == 0:
            x = _exp_step(x, sigma, sigma_next, denoised)
        else:
            h = math.log(sigma) - math.log(sigma_next)
            h_last = math.log(float(sigmas[i - 1])) - math.log(sigma)
            r = h_last / h
            blended = _f(1 + 1 / (2 * r)) * denoised - _f(1 / (2 * r)) * old_denoised
            x = _exp_step(x, sigma, sigma_next, blended)
        old_denoised = denoised
    return x


def dpmpp_2s_ancestral(x, sigmas, noise: Noise, eta: float = 1.0, s_noise: float = 1.0) -> Solver:
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = yield x, sigma
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        if sigma_down == 0:
            x = x + _slope(x, sigma, denoised) * _f(sigma_down - sigma)
        else:
            sigma_s = _log_midpoint(sigma, sigma_down)
            x_2 = _exp_step(x, sigma, sigma_s, denoised)
            denoised_2 = yield x_2, sigma_s
            x = _exp_step(x, sigma, sigma_down, denoised_2)
        if sigma_next > 0:
            x = x + noise(sigma, sigma_next) * _f(s_noise) * _f(sigma_up)
    return x


def dpmpp_sde(x, sigmas, noise: Noise, eta: float = 1.0, s_noise: float = 1.0, r: float = 0.5) -> Solver:
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = yield x, sigma
        if sigma_next == 0:
            x = x + _slope(x, sigma, denoised) * _f(sigma_next - sigma)
            continue
        t, t_next = -math.log(sigma), -math.log(sigma_next)
        sigma_s = math.exp(-(t + (t_next - t) * r))
        fac = 1 / (2 * r)
        down, up = ancestral_step(sigma, sigma_s, eta)
        x_2 = _exp_step(x, sigma, down, denoised)
        x_2 = x_2 + noise(sigma, sigma_s) * _f(s_noise) * _f(up)
        denoised_2 = yield x_2, sigma_s
        down, up = ancestral_step(sigma, sigma_next, eta)
        blended = _f(1 - fac) * denoised + _f(fac) * denoised_2
        x = _exp_step(x, sigma, down, blended)
        x = x + noise(sigma, sigma_next) * _f(s_noise) * _f(up)
    return x


def dpmpp_2m_sde(
    x, sigmas, noise: Noise, eta: float = 1.0, s_noise: float = 1.0, solver_type: str = "midpoint"
) -> Solver:
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = yield x, sigma
        h = None
        if sigma_next == 0:
            x = denoised
        else:
            h = math.log(sigma) - math.log(sigma_next)
            eta_h = eta * h
            phi = -math.expm1(-h - eta_h)
            x = _f(sigma_next / sigma * math.exp(-eta_h)) * x + _f(phi) * denoised
            if old_denoised is not None and h_last is not None:
                r = h_last / h
                if solver_type == "heun":
                    weight = (phi / (-h - eta_h) + 1) * (1 / r)
                else:
                    weight = 0.5 * phi * (1 / r)
                x = x + _f(weight) * (denoised - old_denoised)
            if eta:
                scale = sigma_next * (-math.expm1(-2 * eta_h)) ** 0.5 * s_noise
                x = x + noise(sigma, sigma_next) * _f(scale)
        old_denoised, h_last = denoised, h
    return x


def dpmpp_3m_sde(x, sigmas, noise: Noise, eta: float = 1.0, s_noise: float = 1.0) -> Solver:
    denoised_1 = denoised_2 = None
    h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = yield x, sigma
        h = None
        if sigma_next == 0:
            x = denoised
        else:
            h = math.log(sigma) - math.log(sigma_next)
            h_eta = h * (eta + 1)
            x = _f(math.exp(-h_eta)) * x + _f(-math.expm1(-h_eta)) * denoised
            phi_2 = math.expm1(-h_eta) / h_eta + 1
            if h_2 is not None and h_1 is not None and denoised_1 is not None and denoised_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / _f(r0)
                d1_1 = (denoised_1 - denoised_2) / _f(r1)
                d1 = d1_0 + (d1_0 - d1_1) * _f(r0 / (r0 + r1))
                d2 = (d1_0 - d1_1) / _f(r0 + r1)
                x = x + _f(phi_2) * d1 - _f(phi_2 / h_eta - 0.5) * d2
            elif h_1 is not None and denoised_1 is not None:
                x = x + _f(phi_2) * ((denoised - denoised_1) / _f(h_1 / h))
            if eta:
                scale = sigma_next * (-math.expm1(-2 * h * eta)) ** 0.5 * s_noise
                x = x + noise(sigma, sigma_next) * _f(scale)
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


def lcm(x, sigmas, noise: Noise) -> Solver:
    """ComfyUI's sample_lcm (not in k-diffusion): each step lands on the prediction and noises
    it afresh to the next level (noise_scaling: x0 + sigma_next * noise)."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        x = yield x, sigma
        if sigma_next > 0:
            x = x + noise(sigma, sigma_next) * _f(sigma_next)
    return x
