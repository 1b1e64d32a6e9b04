"""A1111's UniPC (modules/models/diffusion/uni_pc/uni_pc.py, called by sd_samplers_timesteps_impl.
unipc), which is not diffusers' UniPCMultistepScheduler:

- time is continuous, t in [1/N, 1] for N training timesteps; log(alpha_t) is the piecewise
  linear interpolation of 0.5 * log(alphas_cumprod) over t_n = (n + 1) / N (NoiseScheduleVP
  'discrete'), sigma_t = sqrt(1 - alpha_t^2), lambda_t = log(alpha_t / sigma_t);
- the model is called at the fractional timestep (t - 1/N) * 1000, and its epsilon becomes the
  data prediction x0 = (x - sigma_t * eps) / alpha_t (predict_x0; a v-prediction's epsilon as in
  a1111_timesteps, at the timestep's whole part);
- the run lays out len(A1111's timesteps) steps (a1111_timesteps.a1111_timesteps) from t = 1 (or,
  from an image, t = last kept timestep / 1000 + 1/1000) to 1/N, by A1111's options:
  uni_pc_skip_type (time_uniform, time_quadratic, logSNR), uni_pc_variant (bh1, bh2),
  uni_pc_order, uni_pc_lower_order_final; multistep, the corrector at every step but the last.
"""

from __future__ import annotations

import numpy as np

from sdrt.errors import ConfigError
from sdrt.runtime.schedulers.a1111_timesteps import A1111TimestepSampler, Noise, Run

#: A1111's option defaults (shared_options.py: uni_pc_variant, _skip_type, _order, _lower_order_final).
DEFAULT_VARIANT = "bh1"
DEFAULT_SKIP_TYPE = "time_uniform"
DEFAULT_ORDER = 3
DEFAULT_LOWER_ORDER_FINAL = True
VARIANTS = ("bh1", "bh2")
SKIP_TYPES = ("time_uniform", "time_quadratic", "logSNR")
#: The model's time input is (t - 1/N) * this (UniPCCFG.get_model_input_time).
MODEL_TIME_SCALE = 1000.0
#: The simplified predictor (order 2) and corrector (order 1) weight.
SIMPLIFIED_RHO = 0.5
#: time_quadratic's power.
QUADRATIC = 2.0


class NoiseScheduleVP:
    """NoiseScheduleVP('discrete', alphas_cumprod=...), in float64."""

    def __init__(self, alphas_cumprod: np.ndarray):
        self.log_alphas = 0.5 * np.log(alphas_cumprod.astype(np.float64))
        self.total_n = len(alphas_cumprod)
        self.t_array = np.linspace(0.0, 1.0, self.total_n + 1)[1:]

    def log_alpha(self, t: float) -> float:
        return float(np.interp(t, self.t_array, self.log_alphas))

    def alpha(self, t: float) -> float:
        return float(np.exp(self.log_alpha(t)))

    def std(self, t: float) -> float:
        return float(np.sqrt(1.0 - np.exp(2.0 * self.log_alpha(t))))

    def lambda_(self, t: float) -> float:
        log_alpha = self.log_alpha(t)
        return log_alpha - 0.5 * float(np.log(1.0 - np.exp(2.0 * log_alpha)))

    def inverse_lambda(self, lamb: np.ndarray) -> np.ndarray:
        log_alpha = -0.5 * np.logaddexp(0.0, -2.0 * lamb)
        return np.interp(log_alpha, self.log_alphas[::-1], self.t_array[::-1])


class A1111UniPC(A1111TimestepSampler):
    """A1111's UniPC with its option defaults (bh1, time_uniform, order 3, lower order final)."""

    reference_name = "A1111 uni_pc.UniPC (sd_samplers_timesteps_impl.unipc)"
    label = "UniPC"

    def __init__(self, config, schedule="automatic"):
        super().__init__(config, schedule)
        self.ns = NoiseScheduleVP(self.alphas_cumprod)
        self.variant, self.skip_type = DEFAULT_VARIANT, DEFAULT_SKIP_TYPE
        self.order, self.lower_order_final = DEFAULT_ORDER, DEFAULT_LOWER_ORDER_FINAL
        self.times = np.zeros(0)

    def _time_steps(self) -> np.ndarray:
        """UniPC.get_time_steps for the run: len(run_timesteps) steps from t_T to 1/N."""
        if self.variant not in VARIANTS:
            raise ConfigError(f"uni_pc_variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.skip_type not in SKIP_TYPES:
            raise ConfigError(f"uni_pc_skip_type must be one of {', '.join(SKIP_TYPES)}, got {self.skip_type!r}")
        steps = len(self.run_timesteps)
        if not 1 <= self.order <= steps:
            raise ConfigError(f"UniPC order ({self.order}) must be at most the sampling steps ({steps})")
        t_0 = 1.0 / self.ns.total_n
        t_start = 1.0
        if self.noise_timestep is not None:  # unipc(is_img2img): the last kept timestep / 1000 + 1/1000
            t_start = float(np.float32(self.run_timesteps[-1]) / np.float32(MODEL_TIME_SCALE)) + 1 / MODEL_TIME_SCALE
        if self.skip_type == "time_uniform":
            return np.linspace(t_start, t_0, steps + 1)
        if self.skip_type == "time_quadratic":
            return np.linspace(t_start ** (1 / QUADRATIC), t_0 ** (1 / QUADRATIC), steps + 1) ** QUADRATIC
        lambdas = np.linspace(self.ns.lambda_(t_start), self.ns.lambda_(t_0), steps + 1)
        return self.ns.inverse_lambda(lambdas)

    def _model_time(self, t) -> np.ndarray:
        return (np.asarray(t) - 1.0 / self.ns.total_n) * MODEL_TIME_SCALE

    def _call_timesteps(self) -> np.ndarray:
        if len(self.run_timesteps) == 0:
            return np.zeros(0, dtype=np.float32)
        self.times = self._time_steps()
        return self._model_time(self.times[:-1]).astype(np.float32)

    def _final_timestep(self) -> float:
        return float(self._model_time(self.times[-1]))

    def _start(self, x: np.ndarray, noise: Noise) -> Run:
        return self._sample(x)

    def _data(self, x: np.ndarray, epsilon: np.ndarray, t: float) -> np.ndarray:
        """UniPC.data_prediction_fn (no thresholding)."""
        return ((x - np.float32(self.ns.std(t)) * epsilon) / np.float32(self.ns.alpha(t))).astype(np.float32)

    def _sample(self, x: np.ndarray) -> Run:
        """UniPC.sample(method='multistep')."""
        times, order, steps = self.times, self.order, len(self.times) - 1
        epsilon, _ = yield x
        models, past = [self._data(x, epsilon, times[0])], [times[0]]
        for init_order in range(1, order):
            x, model_x = yield from self._update(x, models, past, times[init_order], init_order, True)
            models.append(model_x)
            past.append(times[init_order])
        for step in range(order, steps + 1):
            step_order = min(order, steps + 1 - step) if self.lower_order_final else order
            use_corrector = step != steps
            x, model_x = yield from self._update(x, models, past, times[step], step_order, use_corrector)
            models, past = models[1:] + models[-1:], past[1:] + [times[step]]
            if use_corrector:
                models[-1] = model_x
        return x

    def _update(self, x, models, past, t, order, use_corrector):
        """UniPC.multistep_uni_pc_bh_update with predict_x0."""
        ns = self.ns
        t_prev_0, model_prev_0 = past[-1], models[-1]
        lambda_prev_0, lambda_t = ns.lambda_(t_prev_0), ns.lambda_(t)
        sigma_prev_0, sigma_t, alpha_t = ns.std(t_prev_0), ns.std(t), ns.alpha(t)
        h = lambda_t - lambda_prev_0
        rks, d1s = [], []
        for i in range(1, order):
            rk = (ns.lambda_(past[-(i + 1)]) - lambda_prev_0) / h
            rks.append(rk)
            d1s.append((models[-(i + 1)] - model_prev_0) / np.float32(rk))
        rks.append(1.0)
        hh = -h
        h_phi_1 = np.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        b_h = hh if self.variant == "bh1" else np.expm1(hh)
        rows, b, factorial = [], [], 1
        for i in range(1, order + 1):
            rows.append(np.power(np.asarray(rks), i - 1))
            b.append(h_phi_k * factorial / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        r, b_vec = np.stack(rows), np.asarray(b)
        x_t_ = np.float32(sigma_t / sigma_prev_0) * x - np.float32(alpha_t * h_phi_1) * model_prev_0
        scale = np.float32(alpha_t * b_h)
        x_t = x_t_
        if d1s:
            rhos_p = np.array([SIMPLIFIED_RHO]) if order == 2 else np.linalg.solve(r[:-1, :-1], b_vec[:-1])
            x_t = x_t_ - scale * _weighted(rhos_p, d1s)
        model_t = None
        if use_corrector:
            rhos_c = np.array([SIMPLIFIED_RHO]) if order == 1 else np.linalg.solve(r, b_vec)
            epsilon, _ = yield x_t.astype(np.float32)
            model_t = self._data(x_t.astype(np.float32), epsilon, t)
            correction = _weighted(rhos_c[:-1], d1s) if d1s else np.float32(0)
            x_t = x_t_ - scale * (correction + np.float32(rhos_c[-1]) * (model_t - model_prev_0))
        return x_t.astype(np.float32), model_t


def _weighted(weights: np.ndarray, values: list[np.ndarray]) -> np.ndarray:
    """einsum('k,bkchw->bchw'): the weighted sum of the differences."""
    total = np.float32(weights[0]) * values[0]
    for weight, value in zip(weights[1:], values[1:]):
        total = total + np.float32(weight) * value
    return total
