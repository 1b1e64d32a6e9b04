"""The reference for sdrt's k-diffusion family: the `k-diffusion` package's own sampling module
(k_diffusion.sampling, which A1111 calls), loaded without the package's heavy top-level
imports, and a k-diffusion denoiser over a model's alphas_cumprod (CompVis-style: epsilon or v)."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path


def k_sampling():
    """k_diffusion.sampling, imported on its own (the package's __init__ imports training code)."""
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the k-diffusion package is not installed (pip install -e '.[test]')")
    folder = Path(next(iter(spec.submodule_search_locations)))
    package = types.ModuleType("k_diffusion")
    package.__path__ = [str(folder)]
    sys.modules["k_diffusion"] = package
    utils = types.ModuleType("k_diffusion.utils")  # sampling uses only append_dims from it

    def append_dims(x, target_dims):
        return x[(...,) + (None,) * (target_dims - x.ndim)]

    utils.append_dims = append_dims
    sys.modules["k_diffusion.utils"] = utils
    package.utils = utils
    for name in ("sampling", "external"):
        module_spec = importlib.util.spec_from_file_location(f"k_diffusion.{name}", folder / f"{name}.py")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[f"k_diffusion.{name}"] = module
        module_spec.loader.exec_module(module)
        setattr(package, name, module)
    return sys.modules["k_diffusion.sampling"]


def k_external():
    k_sampling()
    return sys.modules["k_diffusion.external"]


def ldm_alphas_cumprod(config: dict):
    """alphas_cumprod as the LDM model code (A1111) makes it: float64 betas, float32 result."""
    import numpy as np
    import torch

    n = config.get("num_train_timesteps", 1000)
    start, end = config.get("beta_start", 0.0001), config.get("beta_end", 0.02)
    schedule = config.get("beta_schedule", "linear")
    if schedule == "scaled_linear":
        betas = torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2
    else:
        betas = torch.linspace(start, end, n, dtype=torch.float64)
    return torch.tensor(np.cumprod(1.0 - betas.numpy()), dtype=torch.float32)


def denoiser(model, config: dict):
    """A k-diffusion denoiser of `model(x_in, t) -> eps or v` for a diffusers scheduler config."""
    external = k_external()
    alphas_cumprod = ldm_alphas_cumprod(config)
    if config.get("prediction_type", "epsilon") == "v_prediction":

        class V(external.DiscreteVDDPMDenoiser):
            def get_v(self, x, t, **kwargs):
                return model(x, t, **kwargs)

        return V(None, alphas_cumprod, quantize=False)

    class Eps(external.DiscreteEpsDDPMDenoiser):
        def get_eps(self, x, t, **kwargs):
            return model(x, t, **kwargs)

    return Eps(None, alphas_cumprod, quantize=False)


def lcm_denoiser(model, config: dict):
    """A1111's LCMCompVisDenoiser (modules/sd_samplers_lcm.py), written here from its source: an
    epsilon denoiser over the model's alphas_cumprod at timesteps 999, 979, ..., 19 (50 levels),
    called at the nearest of them (index * 20 + 19), its prediction under LCM's boundary
    condition (sigma_data 0.5, timestep x 10) on the unscaled sample."""
    import torch

    external = k_external()
    utils = sys.modules["k_diffusion.utils"]
    full = ldm_alphas_cumprod(config)
    timesteps, original = len(full), 50
    skip = timesteps // original
    valid = torch.zeros(original, dtype=torch.float32)
    for x in range(original):
        valid[original - 1 - x] = full[timesteps - 1 - x * skip]

    class LCM(external.DiscreteEpsDDPMDenoiser):
        def get_sigmas(self, n=None):
            start, end = self.sigma_to_t(self.sigma_max), self.sigma_to_t(self.sigma_min)
            return k_sampling().append_zero(self.t_to_sigma(torch.linspace(start, end, n)))

        def sigma_to_t(self, sigma, quantize=None):
            dists = sigma.log() - self.log_sigmas[:, None]
            return dists.abs().argmin(dim=0).view(sigma.shape) * skip + (skip - 1)

        def t_to_sigma(self, timestep):
            t = torch.clamp(((timestep - (skip - 1)) / skip).float(), min=0, max=(len(self.sigmas) - 1))
            return super().t_to_sigma(t)

        def get_eps(self, x, t, **kwargs):
            return model(x, t, **kwargs)

        def forward(self, input, sigma, **kwargs):
            c_out, c_in = [utils.append_dims(x, input.ndim) for x in self.get_scalings(sigma)]
            eps = self.get_eps(input * c_in, self.sigma_to_t(sigma), **kwargs)
            denoised = input + eps * c_out
            scaled = utils.append_dims(self.sigma_to_t(sigma), denoised.ndim) * 10.0
            c_skip = 0.5**2 / (scaled**2 + 0.5**2)
            c_out = scaled / (scaled**2 + 0.5**2) ** 0.5
            return c_out * denoised + c_skip * input

    return LCM(None, valid, quantize=None)


def sample_lcm(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
    """A1111's sample_lcm (modules/sd_samplers_lcm.py): land on the prediction, noise it afresh."""
    ks = k_sampling()
    noise_sampler = ks.default_noise_sampler(x) if noise_sampler is None else noise_sampler
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x = model(x, sigmas[i] * s_in, **(extra_args or {}))
        if sigmas[i + 1] > 0:
            x += sigmas[i + 1] * noise_sampler(sigmas[i], sigmas[i + 1])
    return x
