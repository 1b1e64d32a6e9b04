"""ComfyUI's KSampler as a reference, written here from ComfyUI's sources independently of sdrt:
comfy/model_sampling.py (ModelSamplingDiscrete: float64 sigmas kept as float32, the nearest
training timestep of a sigma, EPS / V_PREDICTION input and denoised), comfy/samplers.py (its
schedulers, calculate_sigmas with the discarded next-to-last level, set_steps' denoise,
KSampler.sample's start / end cut, max_denoise noise scaling, cfg_function), comfy/sample.py
(prepare_noise: the whole batch from torch.manual_seed(seed)) and comfy/k_diffusion/sampling.py
(default_noise_sampler: a CPU generator seeded seed + 1; BrownianTreeNoiseSampler with the seed;
sample_lcm), driving the `k-diffusion` package's samplers (ComfyUI's comfy/k_diffusion is a fork
of it; where the fork differs, noted below) and diffusers' UNet."""

from __future__ import annotations

import math

import numpy as np
import torch

from support.comfy_unipc import sample_unipc
from support.kdiffusion_reference import k_sampling


class ComfyModelSampling:
    """ModelSamplingDiscrete with EPS or V_PREDICTION (sigma_data 1)."""

    def __init__(self, config: dict):
        n = config.get("num_train_timesteps", 1000)
        start, end = config.get("beta_start", 0.00085), config.get("beta_end", 0.012)
        if config.get("beta_schedule", "scaled_linear") == "scaled_linear":  # ComfyUI's "linear"
            betas = torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2
        else:
            betas = torch.linspace(start, end, n, dtype=torch.float64)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.sigmas, self.log_sigmas = sigmas.float(), sigmas.log().float()
        self.v_prediction = config.get("prediction_type", "epsilon") == "v_prediction"

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def timestep(self, sigma):
        distances = sigma.log() - self.log_sigmas[:, None]
        return distances.abs().argmin(dim=0).view(sigma.shape)

    def sigma(self, timestep):
        t = torch.clamp(torch.as_tensor(timestep).float(), min=0, max=len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def calculate_input(self, sigma, x):
        return x / (sigma.view(-1, 1, 1, 1) ** 2 + 1) ** 0.5

    def calculate_denoised(self, sigma, output, x):
        sigma = sigma.view(-1, 1, 1, 1)
        if self.v_prediction:
            return x / (sigma**2 + 1) - output * sigma / (sigma**2 + 1) ** 0.5
        return x - output * sigma


# ---- comfy/samplers.py's schedulers ----
def normal_scheduler(s: ComfyModelSampling, steps: int, sgm: bool = False):
    start, end = s.timestep(s.sigma_max), s.timestep(s.sigma_min)
    append_zero = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(s.sigma(end)), 0, abs_tol=0.00001):
            steps += 1
            append_zero = False
        timesteps = torch.linspace(start, end, steps)
    sigs = [float(s.sigma(t)) for t in timesteps]
    return torch.FloatTensor(sigs + ([0.0] if append_zero else []))


def simple_scheduler(s, steps):
    ss = len(s.sigmas) / steps
    return torch.FloatTensor([float(s.sigmas[-(1 + int(x * ss))]) for x in range(steps)] + [0.0])


def ddim_scheduler(s, steps):
    x, sigs = 1, [0.0]
    ss = max(len(s.sigmas) // steps, 1)
    while x < len(s.sigmas):
        sigs.append(float(s.sigmas[x]))
        x += ss
    return torch.FloatTensor(sigs[::-1])


def beta_scheduler(s, steps, alpha=0.6, beta=0.6):
    from scipy import stats

    total = len(s.sigmas) - 1
    ts = np.rint(stats.beta.ppf(1 - np.linspace(0, 1, steps, endpoint=False), alpha, beta) * total)
    sigs, last = [], -1
    for t in ts:
        if t != last:
            sigs.append(float(s.sigmas[int(t)]))
        last = t
    return torch.FloatTensor(sigs + [0.0])


def linear_quadratic_schedule(s, steps, threshold_noise=0.025):
    if steps == 1:
        schedule = [1.0, 0.0]
    else:
        linear_steps = steps // 2
        linear = [i * threshold_noise / linear_steps for i in range(linear_steps)]
        diff = linear_steps - threshold_noise * steps
        quadratic_steps = steps - linear_steps
        quadratic_coef = diff / (linear_steps * quadratic_steps**2)
        linear_coef = threshold_noise / linear_steps - 2 * diff / (quadratic_steps**2)
        const = quadratic_coef * (linear_steps**2)
        quadratic = [quadratic_coef * (i**2) + linear_coef * i + const for i in range(linear_steps, steps)]
        schedule = [1.0 - x for x in linear + quadratic + [1.0]]
    return torch.FloatTensor(schedule) * s.sigma_max


def kl_optimal_scheduler(n, sigma_min, sigma_max):
    adj_idxs = torch.arange(n, dtype=torch.float).div_(n - 1)
    sigmas = adj_idxs.new_zeros(n + 1)
    sigmas[:-1] = (adj_idxs * math.atan(sigma_min) + (1 - adj_idxs) * math.atan(sigma_max)).tan_()
    return sigmas


def comfy_scheduler(s: ComfyModelSampling, name: str, steps: int):
    ks = k_sampling()
    low, high = float(s.sigma_min), float(s.sigma_max)
    handlers = {
        "simple": lambda: simple_scheduler(s, steps),
        "sgm_uniform": lambda: normal_scheduler(s, steps, sgm=True),
        "karras": lambda: ks.get_sigmas_karras(n=steps, sigma_min=low, sigma_max=high),
        "exponential": lambda: ks.get_sigmas_exponential(n=steps, sigma_min=low, sigma_max=high),
        "ddim_uniform": lambda: ddim_scheduler(s, steps),
        "beta": lambda: beta_scheduler(s, steps),
        "normal": lambda: normal_scheduler(s, steps),
        "linear_quadratic": lambda: linear_quadratic_schedule(s, steps),
        "kl_optimal": lambda: kl_optimal_scheduler(steps, low, high),
    }
    return handlers[name]()


#: ComfyUI's samplers -> the k-diffusion function (ComfyUI's "ddim" is sample_euler).
FUNCTIONS = {
    "euler": "sample_euler",
    "euler_ancestral": "sample_euler_ancestral",
    "heun": "sample_heun",
    "dpm_2": "sample_dpm_2",
    "dpm_2_ancestral": "sample_dpm_2_ancestral",
    "lms": "sample_lms",
    "dpm_fast": "sample_dpm_fast",
    "dpmpp_2s_ancestral": "sample_dpmpp_2s_ancestral",
    "dpmpp_sde": "sample_dpmpp_sde",
    "dpmpp_2m": "sample_dpmpp_2m",
    "dpmpp_2m_sde": "sample_dpmpp_2m_sde",
    "dpmpp_2m_sde_heun": "sample_dpmpp_2m_sde",  # solver_type "heun"
    "dpmpp_3m_sde": "sample_dpmpp_3m_sde",
    "ddim": "sample_euler",
    "lcm": None,
    "dpm_adaptive": "sample_dpm_adaptive",
    "uni_pc": None,  # comfy/extra_samplers/uni_pc.py (support/comfy_unipc.py)
    "uni_pc_bh2": None,
}
DISCARD_PENULTIMATE = ("dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2")
ANCESTRAL = ("euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "lcm")
BROWNIAN = ("dpmpp_sde", "dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde")


def ksampler_sigmas(s, sampler, scheduler, steps, denoise=1.0, start_step=None, last_step=None, force_full=False):
    """KSampler.calculate_sigmas, set_steps and sample's cut."""

    def calculate(n):
        if sampler in DISCARD_PENULTIMATE:
            sigmas = comfy_scheduler(s, scheduler, n + 1)
            return torch.cat([sigmas[:-2], sigmas[-1:]])
        return comfy_scheduler(s, scheduler, n)

    sigmas = calculate(steps) if denoise > 0.9999 else calculate(int(steps / denoise))[-(steps + 1) :]
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[: last_step + 1].clone()
        if force_full:
            sigmas[-1] = 0
    if start_step is not None:
        sigmas = sigmas[start_step:]
    return sigmas


def sample_lcm(model, x, sigmas, noise_sampler, s: ComfyModelSampling):
    """comfy/k_diffusion/sampling.py's sample_lcm (not in the k-diffusion package)."""
    for i in range(len(sigmas) - 1):
        x = model(x, sigmas[i] * x.new_ones([x.shape[0]]))
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1]  # EPS noise_scaling
    return x


@torch.no_grad()
def prepare_noise_with_indices(latent_image, seed, noise_inds):
    """comfy/sample.py prepare_noise with a latent's batch_index: one image-sized draw per index
    from 0 to the largest, the unique indices' draws kept, rows picked by np.unique's inverse."""
    import numpy as np

    generator = torch.manual_seed(seed)
    unique, inverse = np.unique(noise_inds, return_inverse=True)
    kept = []
    for i in range(unique[-1] + 1):
        noise = torch.randn([1, *latent_image.size()[1:]], generator=generator, device="cpu")
        if i in unique:
            kept.append(noise)
    return torch.cat([kept[i] for i in inverse], axis=0)


def comfy_ksampler(unet, s, cond, uncond, sampler, scheduler, steps, cfg, seed, latent_image, **cut):
    """ComfyUI's common_ksampler -> KSAMPLER.sample, on `latent_image` (sdrt's scaled latents,
    ComfyUI's after process_latent_in). `cut`: denoise, start_step, last_step, force_full,
    add_noise, noise_inds (the latent's batch_index), noise_mask (a [batch, height, width] mask:
    1 repaints); `control(scaled, t, context, sigma)`: extra UNet keyword arguments for a call
    (ControlNet residuals), or {}; `guided(x, sigma)`: the guided denoised sample in place of the
    cond/uncond pair (conditioning lists)."""
    ks = k_sampling()
    add_noise = cut.pop("add_noise", True)
    noise_mask = cut.pop("noise_mask", None)
    noise_inds = cut.pop("noise_inds", None)
    control = cut.pop("control", None) or (lambda scaled, t, context, sigma: {})
    guided = cut.pop("guided", None)  # guided(x, sigma) -> the guided denoised sample, instead of cond/uncond
    sigmas = ksampler_sigmas(s, sampler, scheduler, steps, **cut)
    if add_noise and noise_inds is not None:
        noise = prepare_noise_with_indices(latent_image, seed, noise_inds)
    elif add_noise:
        noise = torch.randn(latent_image.size(), generator=torch.manual_seed(seed), device="cpu")
    else:
        noise = torch.zeros_like(latent_image)
    max_sigma, first = float(s.sigma_max), float(sigmas[0])
    max_denoise = math.isclose(max_sigma, first, rel_tol=1e-05) or first > max_sigma
    x = noise * (torch.sqrt(1.0 + sigmas[0] ** 2.0) if max_denoise else sigmas[0]) + latent_image
    context = None if guided is not None else torch.cat([cond, uncond])

    def model(x, sigma, **kwargs):
        both_x, both_sigma = torch.cat([x, x]), torch.cat([sigma, sigma])
        t = s.timestep(both_sigma).float()
        scaled = s.calculate_input(both_sigma, both_x)
        extra = control(scaled, t, context, sigma)
        output = unet(scaled, t, encoder_hidden_states=context, **extra).sample
        c, u = s.calculate_denoised(both_sigma, output, both_x).chunk(2)
        return u + (c - u) * cfg

    if guided is not None:

        def model(x, sigma, **kwargs):
            return guided(x, sigma)

    if noise_mask is not None:  # KSamplerX0Inpaint, the mask as comfy.utils.reshape_mask makes it
        mask = torch.nn.functional.interpolate(
            noise_mask.reshape(-1, 1, *noise_mask.shape[-2:]), size=latent_image.shape[-2:], mode="bilinear"
        )
        mask = mask.repeat(-(-latent_image.shape[0] // mask.shape[0]), latent_image.shape[1], 1, 1)
        mask = mask[: latent_image.shape[0]]
        mask_noise = noise
        if sampler == "ddim":  # ComfyUI's ddim: inpaint_options "random"
            mask_noise = torch.randn(noise.shape, generator=torch.manual_seed(seed + 1))
        unmasked = model

        def model(x, sigma, **kwargs):
            noised = latent_image + mask_noise * sigma.view(-1, 1, 1, 1)
            out = unmasked(x * mask + noised * (1 - mask), sigma)
            return out * mask + latent_image * (1 - mask)

    generator = torch.Generator("cpu").manual_seed(seed + 1)  # default_noise_sampler on the CPU

    def fresh(sigma, sigma_next):
        return torch.randn(x.size(), generator=generator)

    kwargs = {}
    if sampler in ANCESTRAL:
        kwargs["noise_sampler"] = fresh
    if sampler in BROWNIAN:
        positive = sigmas[sigmas > 0]
        kwargs["noise_sampler"] = ks.BrownianTreeNoiseSampler(x, positive.min(), sigmas.max(), seed=seed)
    if sampler == "dpmpp_2m_sde_heun":
        kwargs["solver_type"] = "heun"
    if sampler == "lcm":
        return sample_lcm(model, x, sigmas, fresh, s)
    if sampler == "dpm_fast":  # ComfyUI's dpm_fast_function: the schedule's range, eta 0
        sigma_min = sigmas[-1] if sigmas[-1] != 0 else sigmas[-2]
        return ks.sample_dpm_fast(model, x, float(sigma_min), float(sigmas[0]), len(sigmas) - 1, disable=True)
    if sampler in ("uni_pc", "uni_pc_bh2"):
        return sample_unipc(model, x, sigmas, "bh2" if sampler == "uni_pc_bh2" else "bh1")
    if sampler == "dpm_adaptive":  # ComfyUI's dpm_adaptive_function: the schedule's range, its defaults
        sigma_min = sigmas[-1] if sigmas[-1] != 0 else sigmas[-2]
        return ks.sample_dpm_adaptive(model, x, float(sigma_min), float(sigmas[0]), disable=True)
    return getattr(ks, FUNCTIONS[sampler])(model, x, sigmas, disable=True, **kwargs)


# ---- comfy/sd1_clip.py's prompt weights, for the SD 1.x CLIP ----
def _parse_parentheses(string):
    result, current, nesting = [], "", 0
    for char in string:
        if char == "(":
            if nesting == 0:
                if current:
                    result.append(current)
                current = "("
            else:
                current += char
            nesting += 1
        elif char == ")":
            nesting -= 1
            if nesting == 0:
                result.append(current + ")")
                current = ""
            else:
                current += char
        else:
            current += char
    if current:
        result.append(current)
    return result


def token_weights(string, current_weight):
    out = []
    for x in _parse_parentheses(string):
        weight = current_weight
        if len(x) >= 2 and x[-1] == ")" and x[0] == "(":
            x = x[1:-1]
            xx = x.rfind(":")
            weight *= 1.1
            if xx > 0:
                try:
                    weight = float(x[xx + 1 :])
                    x = x[:xx]
                except ValueError:
                    pass
            out += token_weights(x, weight)
        else:
            out += [(x, current_weight)]
    return out


def comfy_tokens(tokenizer, text):
    """SDTokenizer.tokenize_with_weights for one chunk: (token, weight) pairs, start + words +
    end, padded with the end token (SD 1.x's pad_with_end) to the tokenizer's length."""
    text = text.replace("\\)", "\0\1").replace("\\(", "\0\2")
    start, end = tokenizer.bos_token_id, tokenizer.eos_token_id
    pairs = [(start, 1.0)]
    for segment, weight in token_weights(text, 1.0):
        words = segment.replace("\0\1", ")").replace("\0\2", "(").replace("\n", " ").split(" ")
        for word in (w for w in words if w != ""):
            pairs += [(t, weight) for t in tokenizer(word)["input_ids"][1:-1]]
    pairs.append((end, 1.0))
    assert len(pairs) <= tokenizer.model_max_length, "one chunk only"
    return pairs + [(end, 1.0)] * (tokenizer.model_max_length - len(pairs))


@torch.no_grad()
def comfy_encode(pipe, text):
    """ClipTokenWeightEncoder.encode_token_weights: each weighted token's state moved from the
    empty prompt's (gen_empty_tokens: start, end, then pad = end), z = (z - z_empty) * w + z_empty."""
    pairs = comfy_tokens(pipe.tokenizer, text)
    tokens = torch.tensor([[t for t, _ in pairs]])
    z = pipe.text_encoder(tokens).last_hidden_state[0].clone()
    weights = [w for _, w in pairs]
    if any(w != 1.0 for w in weights):
        start, end = pipe.tokenizer.bos_token_id, pipe.tokenizer.eos_token_id
        empty = torch.tensor([[start, end] + [end] * (len(pairs) - 2)])
        z_empty = pipe.text_encoder(empty).last_hidden_state[0]
        for j, weight in enumerate(weights):
            if weight != 1.0:
                z[j] = (z[j] - z_empty[j]) * weight + z_empty[j]
    return z[None]
