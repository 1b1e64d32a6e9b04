"""ComfyUI's UniPC (comfy/extra_samplers/uni_pc.py: `uni_pc` is variant bh1, `uni_pc_bh2` bh2),
as a solver coroutine (see solvers.py): multistep UniPC predicting x0, in ComfyUI's sigma space.

Its noise schedule is the sigma itself (SigmaConvert): alpha = 1 / sqrt(1 + sigma^2), std =
sigma * alpha, lambda = log(alpha) - log(std), all float32 as ComfyUI computes them; the state
is the variance-preserving sample x * alpha, and the model's denoised prediction comes back
through its epsilon, x0 = (x_vp - std * eps) / alpha. A final level 0 is replaced by 0.001 and
the result is the state over that level's alpha. The order is min(3, levels - 2), lower at the
first steps and the last; every step but the last runs the corrector, whose model call (at the
predicted sample) is the one the next step uses. One model call per step, none at the last.
"""

from __future__ import annotations

import numpy as np

from sdrt.runtime.schedulers.kdiffusion.solvers import Noise, Solver

_f = np.float32

#: sample_unipc: the level a schedule's final 0 becomes, and the highest order.
FINAL_SIGMA = 0.001
MAX_ORDER = 3
#: The simplified coefficient of the order-2 predictor and the order-1 corrector.
SIMPLE_RHO = 0.5
BH1, BH2 = "bh1", "bh2"


def _log_alpha(sigma):
    return _f(0.5) * np.log(_f(1) / (sigma * sigma + _f(1)))


def _std(sigma):
    return np.sqrt(_f(1) - np.exp(_f(2) * _log_alpha(sigma)))


def _lambda(sigma):
    log_alpha = _log_alpha(sigma)
    return log_alpha - _f(0.5) * np.log(_f(1) - np.exp(_f(2) * log_alpha))


def _data_prediction(x, sigma):
    """The model's x0 at a state: it is called on the variance-exploding sample."""
    x_ve = x * (sigma**2 + _f(1)) ** _f(0.5)
    denoised = yield x_ve, float(sigma)
    eps = (x_ve - denoised) / sigma
    return (x - _std(sigma) * eps) / np.exp(_log_alpha(sigma))


def _update(x, models: list, times: list, t, order: int, *, corrector: bool, variant: str):
    """One multistep UniPC step (the B(h) update) from times[-1] to t: (x at t, model at x)."""
    t_0, model_0 = times[-1], models[-1]
    lambda_0, lambda_t = _lambda(t_0), _lambda(t)
    alpha_t = np.exp(_log_alpha(t))
    h = lambda_t - lambda_0
    rks, d1s = [], []
    for i in range(1, order):
        rk = (_lambda(times[-(i + 1)]) - lambda_0) / h
        rks.append(rk)
        d1s.append((models[-(i + 1)] - model_0) / rk)
    rks.append(_f(1))
    ratios = np.array(rks, dtype=np.float32)
    hh = -h
    h_phi_1 = np.expm1(hh)
    h_phi_k = h_phi_1 / hh - _f(1)
    b_h = hh if variant == BH1 else np.expm1(hh)
    factorial = 1
    rows, b = [], []
    for i in range(1, order + 1):
        rows.append(ratios ** (i - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - _f(1 / factorial)
    matrix, b = np.stack(rows).astype(np.float32), np.array(b, dtype=np.float32)
    x_t_ = (_std(t) / _std(t_0)) * x - (alpha_t * h_phi_1) * model_0
    x_t = x_t_
    if d1s:
        rhos_p = np.array([SIMPLE_RHO], np.float32) if order == 2 else np.linalg.solve(matrix[:-1, :-1], b[:-1])
        x_t = x_t_ - (alpha_t * b_h) * sum(_f(rho) * d for rho, d in zip(rhos_p, d1s))
    model_t = None
    if corrector:
        model_t = yield from _data_prediction(x_t, t)
        rhos_c = np.array([SIMPLE_RHO], np.float32) if order == 1 else np.linalg.solve(matrix, b)
        correction = rhos_c[-1] * (model_t - model_0)
        if d1s:
            correction = sum(_f(rho) * d for rho, d in zip(rhos_c[:-1], d1s)) + correction
        x_t = x_t_ - (alpha_t * b_h) * correction
    return x_t, model_t


def uni_pc(x, sigmas, noise: Noise, variant: str = BH1) -> Solver:
    times = np.array(sigmas, dtype=np.float32)
    if times[-1] == 0:
        times[-1] = _f(FINAL_SIGMA)
    x = x / np.sqrt(_f(1) + times[0] ** 2)
    steps, order = len(times) - 1, min(MAX_ORDER, len(times) - 2)
    models: list = []
    previous: list = []
    for step_index in range(steps):
        if step_index == 0:
            models, previous = [(yield from _data_prediction(x, times[0]))], [times[0]]
        elif step_index < order:
            x, model = yield from _update(
                x, models, previous, times[step_index], step_index, corrector=True, variant=variant
            )
            models.append(model)
            previous.append(times[step_index])
        else:
            last = step_index + (2 if step_index == steps - 1 else 1)
            for step in range(step_index, last):
                step_order = min(order, steps + 1 - step)
                x, model = yield from _update(
                    x, models, previous, times[step], step_order, corrector=step != steps, variant=variant
                )
                models, previous = models[1:] + models[-1:], previous[1:] + [times[step]]
                if step < steps:
                    models[-1] = model
    return x / np.exp(_log_alpha(times[-1]))
