"""A1111's timestep samplers DDIM, DDIM CFG++, PLMS and UniPC, written in torch from A1111's
modules/sd_samplers_timesteps.py (get_timesteps, sample, sample_img2img, the v denoiser),
sd_samplers_timesteps_impl.py (ddim, ddim_cfgpp, plms, unipc), sd_samplers_cfg_denoiser.py
(cond_scale_miltiplier, last_noise_uncond, mask_before_denoising) and
modules/models/diffusion/uni_pc/uni_pc.py (NoiseScheduleVP 'discrete', UniPC.sample multistep,
the B(h) update), independently of sdrt. They drive a diffusers UNet with A1111's CPU noise
(one torch CPU generator per image seed, the initial noise then each randn_like from it)."""

from __future__ import annotations

import numpy as np
import torch

from support.a1111_img2img import a1111_latent_mask, a1111_steps
from support.kdiffusion_reference import ldm_alphas_cumprod

UNIPC_DEFAULTS = {"variant": "bh1", "skip_type": "time_uniform", "order": 3, "lower_order_final": True}


def get_timesteps(steps: int) -> torch.Tensor:
    return torch.clip(torch.asarray(list(range(0, 1000, 1000 // steps))) + 1, 0, 999)


def ddim(model, x, timesteps, ac, noise, eta=0.0, cfgpp=False):
    alphas = ac[timesteps]
    alphas_prev = ac[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].to(torch.float64)
    sqrt_one_minus_alphas = torch.sqrt(1 - alphas)
    a, a_prev = alphas.numpy(), alphas_prev.numpy()
    sigmas = eta * np.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
    s_x = x.new_ones((x.shape[0], 1, 1, 1))
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t, e_uncond = model(x, timesteps[index].item())
        a_t, a_prev = alphas[index].item() * s_x, alphas_prev[index].item() * s_x
        sigma_t, sqrt_one_minus_at = sigmas[index].item() * s_x, sqrt_one_minus_alphas[index].item() * s_x
        pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
        dir_xt = (1.0 - a_prev - sigma_t**2).sqrt() * (e_uncond if cfgpp else e_t)
        x = a_prev.sqrt() * pred_x0 + dir_xt + sigma_t * noise()
    return x


def plms(model, x, timesteps, ac, noise):
    alphas = ac[timesteps]
    alphas_prev = ac[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].to(torch.float64)
    sqrt_one_minus_alphas = torch.sqrt(1 - alphas)
    s_x = x.new_ones((x.shape[0], 1, 1, 1))
    old_eps = []

    def x_prev_of(x, e_t, index):
        a_t, a_prev = alphas[index].item() * s_x, alphas_prev[index].item() * s_x
        pred_x0 = (x - sqrt_one_minus_alphas[index].item() * s_x * e_t) / a_t.sqrt()
        return a_prev.sqrt() * pred_x0 + (1.0 - a_prev).sqrt() * e_t

    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model(x, timesteps[index].item())[0]
        if len(old_eps) == 0:
            x_prev = x_prev_of(x, e_t, index)
            e_t_next = model(x_prev, timesteps[max(index - 1, 0)].item())[0]
            e_t_prime = (e_t + e_t_next) / 2
        elif len(old_eps) == 1:
            e_t_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            e_t_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            e_t_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x = x_prev_of(x, e_t_prime, index)
        old_eps.append(e_t)
        if len(old_eps) >= 4:
            old_eps.pop(0)
    return x


class VP:
    """NoiseScheduleVP('discrete', alphas_cumprod)."""

    def __init__(self, ac):
        self.log_alpha_array = 0.5 * torch.log(ac)
        self.total_N = len(ac)
        self.t_array = torch.linspace(0.0, 1.0, self.total_N + 1)[1:]

    def log_alpha(self, t):
        value = np.interp(float(t), self.t_array.numpy(), self.log_alpha_array.numpy())
        return torch.tensor(value, dtype=torch.float32)

    def alpha(self, t):
        return torch.exp(self.log_alpha(t))

    def std(self, t):
        return torch.sqrt(1.0 - torch.exp(2.0 * self.log_alpha(t)))

    def lam(self, t):
        la = self.log_alpha(t)
        return la - 0.5 * torch.log(1.0 - torch.exp(2.0 * la))

    def inverse_lambda(self, lamb):
        log_alpha = -0.5 * torch.logaddexp(torch.zeros((1,)), -2.0 * lamb)
        xp, fp = torch.flip(self.log_alpha_array, [0]).numpy(), torch.flip(self.t_array, [0]).numpy()
        return torch.tensor(np.interp(log_alpha.numpy(), xp, fp), dtype=torch.float32)


def unipc(model, x, timesteps, ac, is_img2img, variant, skip_type, order, lower_order_final):
    ns = VP(ac)
    steps = len(timesteps)
    t_0, t_T = 1.0 / ns.total_N, (timesteps[-1] / 1000 + 1 / 1000).item() if is_img2img else 1.0
    if skip_type == "time_uniform":
        ts = torch.linspace(t_T, t_0, steps + 1)
    elif skip_type == "time_quadratic":
        ts = torch.linspace(t_T**0.5, t_0**0.5, steps + 1).pow(2)
    else:
        ts = ns.inverse_lambda(torch.linspace(ns.lam(t_T).item(), ns.lam(t_0).item(), steps + 1))

    def model_fn(x, t):
        noise = model(x, (t - 1.0 / ns.total_N) * 1000.0)[0]
        return (x - ns.std(t) * noise) / ns.alpha(t)

    def update(x, model_prev_list, t_prev_list, t, order, use_corrector):
        t_prev_0, model_prev_0 = t_prev_list[-1], model_prev_list[-1]
        lambda_prev_0, lambda_t = ns.lam(t_prev_0), ns.lam(t)
        sigma_prev_0, sigma_t, alpha_t = ns.std(t_prev_0), ns.std(t), ns.alpha(t)
        h = lambda_t - lambda_prev_0
        rks, D1s = [], []
        for i in range(1, order):
            rk = (ns.lam(t_prev_list[-(i + 1)]) - lambda_prev_0) / h
            rks.append(rk)
            D1s.append((model_prev_list[-(i + 1)] - model_prev_0) / rk)
        rks.append(1.0)
        rks = torch.tensor(rks)
        hh = -h
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        factorial_i = 1
        B_h = hh if variant == "bh1" else torch.expm1(hh)
        R, b = [], []
        for i in range(1, order + 1):
            R.append(torch.pow(rks, i - 1))
            b.append(h_phi_k * factorial_i / B_h)
            factorial_i *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial_i
        R, b = torch.stack(R), torch.tensor(b)
        if D1s:
            D1s = torch.stack(D1s, dim=1)
            rhos_p = torch.tensor([0.5]) if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1])
        else:
            D1s = None
        if use_corrector:
            rhos_c = torch.tensor([0.5]) if order == 1 else torch.linalg.solve(R, b)
        x_t_ = sigma_t / sigma_prev_0 * x - alpha_t * h_phi_1 * model_prev_0
        pred_res = torch.einsum("k,bkchw->bchw", rhos_p, D1s) if D1s is not None else 0
        x_t = x_t_ - alpha_t * B_h * pred_res
        model_t = None
        if use_corrector:
            model_t = model_fn(x_t, t)
            corr_res = torch.einsum("k,bkchw->bchw", rhos_c[:-1], D1s) if D1s is not None else 0
            x_t = x_t_ - alpha_t * B_h * (corr_res + rhos_c[-1] * (model_t - model_prev_0))
        return x_t, model_t

    model_prev_list, t_prev_list = [model_fn(x, ts[0])], [ts[0]]
    for init_order in range(1, order):
        x, model_x = update(x, model_prev_list, t_prev_list, ts[init_order], init_order, True)
        model_prev_list.append(model_x)
        t_prev_list.append(ts[init_order])
    for step in range(order, steps + 1):
        step_order = min(order, steps + 1 - step) if lower_order_final else order
        x, model_x = update(x, model_prev_list, t_prev_list, ts[step], step_order, step != steps)
        for i in range(order - 1):
            t_prev_list[i], model_prev_list[i] = t_prev_list[i + 1], model_prev_list[i + 1]
        t_prev_list[-1] = ts[step]
        if step < steps:
            model_prev_list[-1] = model_x
    return x


@torch.no_grad()
def a1111_timestep_image(
    pipe, label, *, prompts, negatives, seeds, guidance, steps, size=64, eta=0.0, image=None, strength=None,
    fix_steps=False, mask=None, unipc_options=None,
):  # fmt: skip
    """A1111's image (float [batch, h, w, 3] in [0, 1]) for sampler `label` on a diffusers pipeline."""
    cond, uncond = pipe.encode_prompt(prompts, "cpu", 1, True, negatives)
    ac = ldm_alphas_cumprod(dict(pipe.scheduler.config))
    v_model = pipe.scheduler.config.get("prediction_type") == "v_prediction"
    multiplier = 1 / 12.5 if label == "DDIM CFG++" else 1.0
    shape = (pipe.unet.config.in_channels, size // 8, size // 8)
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]

    def randn():  # ImageRNG.next
        return torch.stack([torch.randn(shape, generator=g) for g in generators])

    x = randn()
    init_latent = keep = nmask = None
    if image is not None:
        pixels = torch.asarray(np.array(image, np.float32) / 255).permute(2, 0, 1)[None] * 2 - 1
        init_latent = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
        init_latent = init_latent.repeat(len(seeds), 1, 1, 1)
        if mask is not None:
            nmask = a1111_latent_mask(mask, (init_latent.shape[3], init_latent.shape[2]))
            keep = 1 - nmask

    def model(x, t):
        """CFGDenoiserTimesteps over the (v) denoiser: (guided eps, unconditional eps)."""
        x_in = x if keep is None else x * nmask + init_latent * keep  # mask_before_denoising
        t_in = torch.full((2 * x.shape[0],), float(t))
        out = pipe.unet(torch.cat([x_in, x_in]), t_in, encoder_hidden_states=torch.cat([cond, uncond])).sample
        if v_model:
            ti = int(t)
            out = ac[ti].sqrt() * out + (1 - ac[ti]).sqrt() * torch.cat([x_in, x_in])
        c, u = out.chunk(2)
        return u + (c - u) * (guidance * multiplier), u

    if image is None:
        timesteps = get_timesteps(steps)
        xi = x
    else:
        total, t_enc = a1111_steps(steps, strength, fix_steps)
        full = get_timesteps(total)
        timesteps = full[:t_enc]
        xi = init_latent * torch.sqrt(ac[full[t_enc]]) + x * torch.sqrt(1 - ac[full[t_enc]])
    if label in ("DDIM", "DDIM CFG++"):
        latents = ddim(model, xi, timesteps, ac, randn, eta=eta, cfgpp=label == "DDIM CFG++")
    elif label == "PLMS":
        latents = plms(model, xi, timesteps, ac, randn)
    else:
        latents = unipc(model, xi, timesteps, ac, image is not None, **{**UNIPC_DEFAULTS, **(unipc_options or {})})
    if keep is not None:
        latents = latents * nmask + init_latent * keep
    decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return (decoded / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
