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
