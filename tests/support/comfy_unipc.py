"""ComfyUI's UniPC sampler (comfy/extra_samplers/uni_pc.py: sample_unipc with variant bh1, and
sample_unipc_bh2), written here in torch from ComfyUI's source, independently of sdrt's NumPy
solver: SigmaConvert's schedule (alpha, std and lambda from sigma), the epsilon of the
variance-exploding denoiser (predict_eps_sigma), UniPC.sample's multistep loop with
lower_order_final and multistep_uni_pc_bh_update's B(h) predictor and corrector."""

from __future__ import annotations

import torch


class SigmaSchedule:
    """SigmaConvert: the noise schedule whose time is sigma."""

    @staticmethod
    def log_mean_coeff(sigma):
        return 0.5 * torch.log(1 / ((sigma * sigma) + 1))

    def alpha(self, sigma):
        return torch.exp(self.log_mean_coeff(sigma))

    def std(self, sigma):
        return torch.sqrt(1.0 - torch.exp(2.0 * self.log_mean_coeff(sigma)))

    def lam(self, sigma):
        coeff = self.log_mean_coeff(sigma)
        return coeff - 0.5 * torch.log(1.0 - torch.exp(2.0 * coeff))


def sample_unipc(model, noise, sigmas, variant="bh1"):
    """`model(x, sigma)` -> denoised (ComfyUI's KSamplerX0Inpaint on the CFG guider)."""
    ns = SigmaSchedule()
    timesteps = sigmas.clone()
    if sigmas[-1] == 0:
        timesteps[-1] = 0.001
    x = noise / torch.sqrt(1.0 + timesteps[0] ** 2.0)

    def x0_of(x, t):  # data_prediction_fn over predict_eps_sigma
        sigma = t.view(-1, 1, 1, 1)
        x_in = x * ((sigma**2 + 1.0) ** 0.5)
        eps = (x_in - model(x_in, t)) / sigma
        return (x - ns.std(t).view(-1, 1, 1, 1) * eps) / ns.alpha(t).view(-1, 1, 1, 1)

    def bh_update(x, model_list, t_list, t, order, use_corrector):
        t_prev, m_prev = t_list[-1], model_list[-1]
        h = ns.lam(t) - ns.lam(t_prev)
        rks, d1s = [], []
        for i in range(1, order):
            rk = ((ns.lam(t_list[-(i + 1)]) - ns.lam(t_prev)) / h)[0]
            rks.append(rk)
            d1s.append((model_list[-(i + 1)] - m_prev) / rk)
        rks.append(1.0)
        rks = torch.tensor(rks)
        hh = -h[0]
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        b_h = hh if variant == "bh1" else torch.expm1(hh)
        rows, b, factorial = [], [], 1
        for i in range(1, order + 1):
            rows.append(torch.pow(rks, i - 1))
            b.append(h_phi_k * factorial / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        rows, b = torch.stack(rows), torch.tensor(b)
        alpha_t = ns.alpha(t).view(-1, 1, 1, 1)
        base = (ns.std(t) / ns.std(t_prev)).view(-1, 1, 1, 1) * x - (alpha_t * h_phi_1) * m_prev
        stacked = torch.stack(d1s, dim=1) if d1s else None
        x_t = base
        if stacked is not None:
            rhos_p = torch.tensor([0.5]) if order == 2 else torch.linalg.solve(rows[:-1, :-1], b[:-1])
            x_t = base - (alpha_t * b_h) * torch.einsum("k,bkchw->bchw", rhos_p, stacked)
        model_t = None
        if use_corrector:
            model_t = x0_of(x_t, t)
            rhos_c = torch.tensor([0.5]) if order == 1 else torch.linalg.solve(rows, b)
            corr = torch.einsum("k,bkchw->bchw", rhos_c[:-1], stacked) if stacked is not None else 0
            x_t = base - (alpha_t * b_h) * (corr + rhos_c[-1] * (model_t - m_prev))
        return x_t, model_t

    steps = len(timesteps) - 1
    order = min(3, len(timesteps) - 2)
    batch = x.shape[0]
    for step_index in range(steps):
        if step_index == 0:
            t = timesteps[0].expand(batch)
            model_list, t_list = [x0_of(x, t)], [t]
        elif step_index < order:
            t = timesteps[step_index].expand(batch)
            x, model_x = bh_update(x, model_list, t_list, t, step_index, True)
            model_list.append(model_x)
            t_list.append(t)
        else:
            for step in range(step_index, step_index + 1 + (1 if step_index == steps - 1 else 0)):
                t = timesteps[step].expand(batch)
                x, model_x = bh_update(x, model_list, t_list, t, min(order, steps + 1 - step), step != steps)
                for i in range(order - 1):
                    t_list[i], model_list[i] = t_list[i + 1], model_list[i + 1]
                t_list[-1] = t
                if step < steps:
                    model_list[-1] = model_x
    return x / ns.alpha(timesteps[-1])
