"""A1111's txt2img sampler names on sdrt's A1111 API run the k-diffusion family, giving the image
A1111 computes: k_diffusion.sampling on A1111's sigma schedule with A1111's CPU noise (one
generator per image seed, seed + i in a batch, its randn_like from the same generators), written
here independently of sdrt from A1111's modules/sd_samplers_kdiffusion.py, sd_schedulers.py and
processing.py, with diffusers' UNet as the denoiser."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import torch

from conftest import diffusers_pipeline
from sdrt.runtime.pipeline import Pipeline
from sdrt.serve.app import ServeSettings, create_app
from support.kdiffusion_reference import denoiser, k_sampling
from support.serving import decode_png, live_server

PROMPT = "a photo of a cat"
A1111_CFG = 7.0
STEPS = 4
SIZE = 64
SEED = 21
BATCH = 2
MAX_PIXEL_ERROR = 2 / 255
MEAN_PIXEL_ERROR = 0.5 / 255
#: A1111's table (sd_samplers_kdiffusion.samplers_k_diffusion): label -> (function, schedule for Automatic).
A1111_TABLE = {"Euler a": ("sample_euler_ancestral", None), "DPM++ 2M": ("sample_dpmpp_2m", "karras")}


class PerImageNoise:
    """A1111's randn_like for CPU randn_source: each image's next draw from its own generator."""

    def __init__(self, generators, shape):
        self.generators, self.shape = generators, shape

    def __getattr__(self, item):
        if item == "randn_like":
            return lambda x: torch.stack([torch.randn(self.shape, generator=g) for g in self.generators])
        return getattr(torch, item)


@torch.no_grad()
def a1111_image(pipe, label: str, schedule: str) -> np.ndarray:
    ks = k_sampling()
    function, automatic = A1111_TABLE[label]
    cond, uncond = pipe.encode_prompt([PROMPT] * BATCH, "cpu", 1, True, [""] * BATCH)
    inner = denoiser(lambda x, t, context: pipe.unet(x, t, encoder_hidden_states=context).sample, pipe.scheduler.config)

    def cfg(x, sigma):
        c, u = inner(torch.cat([x, x]), torch.cat([sigma, sigma]), context=torch.cat([cond, uncond])).chunk(2)
        return u + (c - u) * A1111_CFG

    name = (automatic or "uniform") if schedule == "Automatic" else schedule.lower()
    if name == "karras":  # A1111's Karras: the model's sigma range, rho 7
        sigmas = ks.get_sigmas_karras(STEPS, inner.sigmas[0].item(), inner.sigmas[-1].item(), rho=7.0)
    else:  # Uniform: k-diffusion's own get_sigmas
        sigmas = inner.get_sigmas(STEPS)
    shape = (pipe.unet.config.in_channels, SIZE // 8, SIZE // 8)
    generators = [torch.Generator("cpu").manual_seed(SEED + i) for i in range(BATCH)]
    x = torch.stack([torch.randn(shape, generator=g) for g in generators]) * sigmas[0]
    ks.torch = PerImageNoise(generators, shape)
    try:
        latents = getattr(ks, function)(cfg, x, sigmas, disable=True)
    finally:
        ks.torch = torch
    image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def served_k(exported_tiny, tiny_models):
    pipeline = Pipeline.load(exported_tiny("standard"))
    reference = diffusers_pipeline("StableDiffusionPipeline", tiny_models["standard"])
    with live_server(create_app(pipeline, ServeSettings(randn_source="CPU"))) as url:  # the reference's CPU noise
        yield url, reference


def txt2img(url, **fields):
    payload = {"prompt": PROMPT, "steps": STEPS, "seed": SEED, "width": SIZE, "height": SIZE, "batch_size": BATCH}
    return httpx.post(f"{url}/sdapi/v1/txt2img", json={**payload, **fields}, timeout=120)


@pytest.mark.parametrize(
    "sampler, schedule, recorded",
    [("DPM++ 2M", "Karras", "Karras"), ("Euler a", "Automatic", None), ("DPM++ 2M Karras", None, "Karras")],
)
def test_txt2img_equals_a1111(served_k, sampler, schedule, recorded):
    url, reference = served_k
    fields = {"sampler_name": sampler} | ({} if schedule is None else {"scheduler": schedule})
    response = txt2img(url, **fields)
    assert response.status_code == 200, response.text
    got = np.stack([np.asarray(decode_png(image), np.float64) / 255 for image in response.json()["images"]])
    label = sampler.removesuffix(" Karras")
    expected = a1111_image(reference, label, schedule or "Karras")
    difference = np.abs(got - expected)
    assert difference.max() <= MAX_PIXEL_ERROR + 0.5 / 255, f"max {difference.max() * 255:.3f}/255"  # PNG rounding
    assert difference.mean() <= MEAN_PIXEL_ERROR, f"mean {difference.mean() * 255:.3f}/255"
    assert expected.std() > 0.01
    info = json.loads(response.json()["info"])
    assert info["all_seeds"] == [SEED + i for i in range(BATCH)]
    text = info["infotexts"][0]
    assert f"Sampler: {label}," in text
    assert (f"Schedule type: {recorded}" in text) if recorded else ("Schedule type:" not in text)


def test_samplers_and_schedulers_list_the_registry(served_k):
    from sdrt.runtime.schedulers import K_SAMPLER_NAMES, K_SCHEDULES, SAMPLERS

    url, _ = served_k
    samplers = httpx.get(f"{url}/sdapi/v1/samplers").json()
    names = [entry["name"] for entry in samplers]
    assert len(names) == len(set(names))
    for name in K_SAMPLER_NAMES:
        entry = next(e for e in samplers if e["name"] == SAMPLERS[name].display_name)
        assert name in entry["aliases"]
    assert "DDIM" in names and "PLMS" in names  # the diffusers-equal family's own labels stay
    schedulers = {entry["name"]: entry["label"] for entry in httpx.get(f"{url}/sdapi/v1/schedulers").json()}
    assert all(schedulers[name] == entry.label for name, entry in K_SCHEDULES.items())


@pytest.mark.parametrize(
    "fields, param", [({"sampler_name": "Nope"}, "sampler_name"), ({"scheduler": "Nope"}, "scheduler")]
)
def test_unknown_names_are_a_400_naming_the_field(served_k, fields, param):
    response = txt2img(served_k[0], **{"sampler_name": "Euler a", **fields})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and "\n" not in error["message"]
    assert ("Euler a" in error["message"]) if param == "sampler_name" else ("karras" in error["message"])


def test_img2img_equals_a1111(served_k):
    """/sdapi/v1/img2img with an A1111 sampler label: A1111's img2img (support/a1111_img2img.py)."""
    import base64
    import io

    from PIL import Image

    from support.a1111_img2img import a1111_img2img

    url, reference = served_k
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    source = Image.fromarray((np.stack([x, y, (x + y) / 2], axis=-1) * 220).astype(np.uint8))
    buffer = io.BytesIO()
    source.save(buffer, format="PNG")
    body = {"init_images": [base64.b64encode(buffer.getvalue()).decode()], "denoising_strength": 0.6}
    response = httpx.post(
        f"{url}/sdapi/v1/img2img",
        json={"prompt": PROMPT, "steps": STEPS, "seed": SEED, "batch_size": BATCH, "sampler_name": "DPM++ 2M", **body},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    got = np.stack([np.asarray(decode_png(image), np.float64) / 255 for image in response.json()["images"]])
    ks = k_sampling()

    def karras(n, inner):  # A1111's Karras: the model's sigma range, rho 7
        return ks.get_sigmas_karras(n, inner.sigmas[0].item(), inner.sigmas[-1].item(), rho=7.0)

    seeds = [SEED + i for i in range(BATCH)]
    expected = a1111_img2img(
        reference, source, "sample_dpmpp_2m", karras, prompts=[PROMPT] * BATCH, negatives=[""] * BATCH,
        seeds=seeds, guidance=A1111_CFG, steps=STEPS, strength=0.6,
    )  # fmt: skip
    difference = np.abs(got - expected)
    assert difference.max() <= MAX_PIXEL_ERROR + 0.5 / 255, f"max {difference.max() * 255:.3f}/255"  # PNG rounding
    assert difference.mean() <= MEAN_PIXEL_ERROR and expected.std() > 0.01
    info = json.loads(response.json()["info"])
    assert info["all_seeds"] == seeds and "Sampler: DPM++ 2M, Schedule type: Karras" in info["infotexts"][0]
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[:, SIZE // 2 :] = 255
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="PNG")
    masked = httpx.post(  # A1111's mask handling around the k-diffusion inpainting (its defaults: blur 4, masked area)
        f"{url}/sdapi/v1/img2img",
        json={"prompt": PROMPT, "steps": STEPS, "seed": SEED, "sampler_name": "Euler a", **body,
              "mask": base64.b64encode(buffer.getvalue()).decode()},
        timeout=120,
    )  # fmt: skip
    assert masked.status_code == 200, masked.text
    repainted = np.asarray(decode_png(masked.json()["images"][0]), np.float64) / 255
    kept = np.asarray(source, np.float64)[:, :20] / 255
    assert np.abs(repainted[:, :20] - kept).max() <= 2 / 255  # A1111 pastes the original back outside the mask
    assert np.abs(repainted[:, 40:] - np.asarray(source, np.float64)[:, 40:] / 255).max() > 0.05


def test_variation_seeds_ensd_and_nv_noise_through_txt2img(served_k, exported_tiny):
    """A1111's variation fields and noise options on txt2img: every image has the seed, the
    variation seeds count up from `subseed`, and each image is the runtime's with those settings
    (whose A1111 rules tests/runtime/test_a1111_noise.py checks); infotext and info report them."""
    from sdrt.runtime.a1111_noise import A1111Noise

    url, _ = served_k
    fields = {"sampler_name": "Euler a", "subseed": 100, "subseed_strength": 0.4}
    fields |= {"seed_resize_from_w": 48, "seed_resize_from_h": 80}
    fields["override_settings"] = {"eta_noise_seed_delta": 31337, "randn_source": "NV"}
    response = txt2img(url, **fields)
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert info["all_seeds"] == [SEED] * BATCH and info["all_subseeds"] == [100, 101]
    text = info["infotexts"][1]
    assert f"Seed: {SEED}," in text and "Variation seed: 101, Variation seed strength: 0.4" in text
    assert "Seed resize from: 48x80" in text and "ENSD: 31337" in text and "RNG: NV" in text
    got = np.stack([np.asarray(decode_png(image)) for image in response.json()["images"]])
    noise = A1111Noise((100, 101), 0.4, (48, 80), 31337, "NV")
    expected = Pipeline.load(exported_tiny("standard")).generate(
        PROMPT, seeds=[SEED] * BATCH, num_images=BATCH, steps=STEPS, guidance_scale=A1111_CFG, width=SIZE,
        height=SIZE, sampler="k_euler_a", a1111_noise=noise,
    )  # fmt: skip
    assert np.array_equal(got, np.stack([np.asarray(image) for image in expected.images]))
    refused = txt2img(url, sampler_name="Euler a", override_settings={"randn_source": "TPU"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "override_settings.randn_source"


def test_the_server_can_start_on_a1111s_default_noise_source(served_k):
    from sdrt.serve.a1111_options import A1111Options

    options = A1111Options(randn_source=ServeSettings(randn_source="GPU").randn_source)
    assert options.report("m", None, 0)["randn_source"] == "GPU"
    response = txt2img(
        served_k[0], sampler_name="Euler a", steps=1, batch_size=1, override_settings={"randn_source": "GPU"}
    )
    assert response.status_code == 200 and "RNG:" not in json.loads(response.json()["info"])["infotexts"][0]


def test_dpm_adaptive_and_lcm_labels_run_a1111s_samplers():
    from sdrt.serve.a1111_samplers import check_eta, sdrt_sampler
    from sdrt.serve.schemas import RequestError

    assert sdrt_sampler("DPM adaptive", None, k_family=True) == ("k_dpm_ad", "automatic")
    assert sdrt_sampler("LCM", "Karras", k_family=True) == ("k_lcm", "karras")
    assert check_eta("k_dpm_ad", 1.0) is None  # webuiapi's default eta: A1111's eta_ancestral
    assert check_eta("k_dpm_ad", 0.5) is None  # A1111's p.eta, in place of eta_ancestral
    with pytest.raises(RequestError, match="eta: LCM runs with eta 1 only, got 0.5") as caught:
        check_eta("k_lcm", 0.5)  # k-diffusion's LCM takes no eta
    assert caught.value.param == "eta"


def test_sampler_settings_reach_the_a1111_route(served_k, exported_tiny):
    """A payload's eta (A1111's p.eta) and override_settings' sampler options run and are recorded."""
    from sdrt.runtime.a1111_noise import A1111Noise
    from sdrt.runtime.sampler_settings import SamplerSettings

    url = served_k[0]
    overrides = {
        "sgm_noise_multiplier": True,
        "s_noise": 0.7,
        "randn_source": "CPU",
    }  # s_noise: not Euler a's (neither run nor recorded)
    response = txt2img(url, sampler_name="Euler a", steps=2, batch_size=1, eta=0.5, override_settings=overrides)
    assert response.status_code == 200, response.text
    text = json.loads(response.json()["info"])["infotexts"][0]
    assert "SGM noise multiplier: True" in text and "Eta: 0.5" in text and "Sigma noise" not in text
    settings = SamplerSettings(sgm_noise_multiplier=True, eta_ancestral=0.5)
    expected = Pipeline.load(exported_tiny("standard")).generate(
        PROMPT, seeds=[SEED], steps=2, guidance_scale=A1111_CFG, width=SIZE, height=SIZE, sampler="k_euler_a",
        a1111_noise=A1111Noise(randn_source="CPU"), sampler_settings=settings,
    )  # fmt: skip
    got = np.asarray(decode_png(response.json()["images"][0]))
    assert np.array_equal(got, np.asarray(expected.images[0]))
