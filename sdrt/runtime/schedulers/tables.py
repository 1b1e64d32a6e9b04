"""The tables every sampler is built from, with the same float32 rounding as diffusers' torch
code: training betas and alphas_cumprod, the spacing of inference timesteps, sigmas and their
Karras / exponential alternatives, and the map from sigmas back to timesteps."""

from __future__ import annotations

import math

import numpy as np

from sdrt.runtime.schedulers.config import SchedulerConfig

# Largest beta of the cosine schedule (Nichol & Dhariwal), as diffusers clips it.
COSINE_MAX_BETA = 0.999
# Offset s of the cosine schedule alpha_bar(t) = cos((t + s) / (1 + s) * pi / 2) ** 2.
COSINE_OFFSET = 0.008
# Karras et al. (2022) schedule exponent.
KARRAS_RHO = 7.0
# Floor under sigma before its log when mapping sigmas back to timesteps.
LOG_SIGMA_FLOOR = 1e-10
# alphas_cumprod's last value after zero-terminal-SNR rescaling (diffusers keeps sigma finite).
ZERO_SNR_ALPHA_CUMPROD = 2.0**-24


def linspace_float32(start: float, end: float, steps: int) -> np.ndarray:
    """`torch.linspace(start, end, steps, dtype=torch.float32)`, bit for bit.

    PyTorch fills the first half as start + step * i and the second as end - step * (n - 1 - i),
    with a fused multiply-add: float64 arithmetic rounded once to float32 reproduces it.
    """
    start32, end32 = np.float32(start), np.float32(end)
    if steps == 1:
        return np.array([start32], dtype=np.float32)
    step = np.float64((end32 - start32) / np.float32(steps - 1))
    index = np.arange(steps, dtype=np.float64)
    halfway = steps // 2
    out = np.empty(steps, dtype=np.float32)
    out[:halfway] = np.float64(start32) + step * index[:halfway]
    out[halfway:] = np.float64(end32) - step * (steps - 1 - index[halfway:])
    return out


def _cosine_betas(num_train_timesteps: int) -> np.ndarray:
    def alpha_bar(t: float) -> float:
        return math.cos((t + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2

    betas = [
        min(1 - alpha_bar((i + 1) / num_train_timesteps) / alpha_bar(i / num_train_timesteps), COSINE_MAX_BETA)
        for i in range(num_train_timesteps)
    ]
    return np.array(betas, dtype=np.float32)


def compute_betas(config: SchedulerConfig) -> np.ndarray:
    """Training betas in float32, with the same rounding as diffusers' torch code."""
    n = config.num_train_timesteps
    if config.trained_betas is not None:
        return np.array(config.trained_betas, dtype=np.float32)
    if config.beta_schedule == "linear":
        return linspace_float32(config.beta_start, config.beta_end, n)
    if config.beta_schedule == "scaled_linear":
        return linspace_float32(config.beta_start**0.5, config.beta_end**0.5, n) ** 2
    return _cosine_betas(n)


def _cumprod_float32(values: np.ndarray) -> np.ndarray:
    """torch.cumprod of float32: float32 results, accumulated in float64 (PyTorch's CPU
    accumulation type for float)."""
    return np.cumprod(values.astype(np.float64)).astype(np.float32)


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Betas whose last timestep has zero signal (Lin et al. 2023), in float32 like diffusers."""
    alphas_bar_sqrt = np.sqrt(_cumprod_float32(np.float32(1.0) - betas))
    first, last = alphas_bar_sqrt[0], alphas_bar_sqrt[-1]
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
    alphas_bar = alphas_bar_sqrt**2
    alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return np.float32(1.0) - alphas


def compute_alphas_cumprod(config: SchedulerConfig, zero_snr_floor: bool = True) -> np.ndarray:
    """Cumulative product of (1 - beta). With zero-terminal-SNR rescaling the last value is
    floored (`zero_snr_floor`) as diffusers' sigma-based samplers do, so sigmas stay finite."""
    betas = compute_betas(config)
    if config.rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    alphas_cumprod = _cumprod_float32(np.float32(1.0) - betas)
    if config.rescale_betas_zero_snr and zero_snr_floor:
        alphas_cumprod[-1] = ZERO_SNR_ALPHA_CUMPROD
    return alphas_cumprod


def training_sigmas(alphas_cumprod: np.ndarray) -> np.ndarray:
    """sigma = sqrt((1 - alpha_bar) / alpha_bar) of each training timestep, in float32."""
    return ((1 - alphas_cumprod) / alphas_cumprod) ** np.float32(0.5)


def spaced_timesteps(
    config: SchedulerConfig, num_inference_steps: int, *, integer: bool = True, span_final: bool = False
) -> np.ndarray:
    """Inference timesteps from high noise to low, per `timestep_spacing` (the choices of
    Table 2 of "Common Diffusion Noise Schedules and Sample Steps are Flawed").

    `integer`: rounded int64 timesteps (DDIM, DDPM, PNDM, the multistep solvers); otherwise
    float32, unrounded for linspace spacing (the sigma samplers). `span_final`: lay out one
    more timestep and drop the last, as the multistep solvers do for linspace and leading
    spacing so that the schedule ends on a final noise level rather than on timestep 0.
    """
    n_train, spacing = config.num_train_timesteps, config.timestep_spacing
    count = num_inference_steps + 1 if span_final and spacing != "trailing" else num_inference_steps
    if spacing == "linspace":
        timesteps = np.linspace(0, n_train - 1, count)
        timesteps = timesteps.round() if integer else timesteps
        timesteps = timesteps[::-1]
    elif spacing == "leading":
        timesteps = (np.arange(0, count) * (n_train // count)).round()[::-1] + config.steps_offset
    else:
        timesteps = np.arange(n_train, 0, -n_train / count).round() - 1
    if count != num_inference_steps:
        timesteps = timesteps[:-1]
    return np.ascontiguousarray(timesteps, dtype=np.int64 if integer else np.float32)


def sigma_to_timestep(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timesteps of sigmas, interpolating in log-sigma."""
    log_sigma = np.log(np.maximum(sigmas, LOG_SIGMA_FLOOR))
    distances = log_sigma - log_sigmas[:, np.newaxis]
    low = np.cumsum(distances >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high = low + 1
    weight = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[high]), 0, 1)
    return ((1 - weight) * low + weight * high).reshape(sigmas.shape)


def karras_sigmas(sigma_min: float, sigma_max: float, num_inference_steps: int) -> np.ndarray:
    """Karras et al. (2022): noise levels evenly spaced in sigma^(1/rho)."""
    ramp = np.linspace(0, 1, num_inference_steps)
    min_inv, max_inv = sigma_min ** (1 / KARRAS_RHO), sigma_max ** (1 / KARRAS_RHO)
    return (max_inv + ramp * (min_inv - max_inv)) ** KARRAS_RHO


def converted_sigmas(config: SchedulerConfig, sigma_min: float, sigma_max: float, num_inference_steps: int):
    """The config's alternative noise levels between sigma_max and sigma_min (Karras or
    exponential spacing), or None when the config asks for neither."""
    if config.use_karras_sigmas:
        return karras_sigmas(sigma_min, sigma_max, num_inference_steps)
    if config.use_exponential_sigmas:
        return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), num_inference_steps))
    return None
