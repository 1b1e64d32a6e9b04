"""ComfyUI's sampler nodes, KSampler and KSamplerAdvanced, on sdrt's loop with ComfyUI's
samplers and their rules (sdrt.runtime.schedulers.kdiffusion.comfy): its common_ksampler's
noise, denoise, start/end cut and the latent's noise mask, and CLIPTextEncode's weights."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from sdrt.runtime.features.lora.merge import LoraWeights
from sdrt.runtime.features.lora.tags import LoraRef
from sdrt.runtime.imaging.resample import resize_latents
from sdrt.runtime.request import GenerationRequest
from sdrt.runtime.request_checks import MAX_STEPS
from sdrt.runtime.schedulers import COMFY_NOT_RUN
from sdrt.runtime.schedulers.kdiffusion.comfy_schedules import KSamplerSteps
from sdrt.runtime.text.prompts.emphasis import COMFYUI_EMPHASIS
from sdrt.serve.comfy.conditioning_nodes import conditioning_entries
from sdrt.serve.comfy.control_nodes import control_units
from sdrt.serve.comfy.dit_sampling import check_clip
from sdrt.serve.comfy.dit_sampling import request_settings as flow_settings
from sdrt.serve.comfy.nodes import INT_MAX, Input, node
from sdrt.serve.comfy.sd_nodes import (
    COND,
    DEFAULT_CFG,
    DEFAULT_STEPS,
    LATENT,
    MAX_CFG,
    MODEL,
    SEED_BITS_KEPT,
    _samplers,
    _schedulers,
)
from sdrt.serve.comfy.values import Latent, ModelHandle


def _loras_of(model: ModelHandle, clip: ModelHandle) -> list[LoraRef]:
    """One LoraRef per LoRA file: its UNet weight from the MODEL chain, text weight from CLIP's."""
    weights: dict[str, list[float]] = {}
    for ref in model.loras:
        weights.setdefault(ref.source, [0.0, 0.0])[1] += ref.weights.unet
    for ref in clip.loras:
        weights.setdefault(ref.source, [0.0, 0.0])[0] += ref.weights.text
    return [LoraRef(name, LoraWeights(text=text, unet=unet)) for name, (text, unet) in weights.items()]


SAMPLER_INPUTS = {
    "steps": Input("INT", DEFAULT_STEPS, 1, MAX_STEPS),
    "cfg": Input("FLOAT", DEFAULT_CFG, 0.0, MAX_CFG, 0.1),
    "sampler_name": Input(_samplers, refusals=COMFY_NOT_RUN),
    "scheduler": Input(_schedulers),
    "positive": Input(COND),
    "negative": Input(COND),
    "latent_image": Input(LATENT),
}
#: KSamplerAdvanced's switches and step range (ComfyUI's: at most 10000 steps).
ENABLE, DISABLE = "enable", "disable"
MAX_ADVANCED_STEP = 10000


def _sample(context, model, seed, sampler_name, scheduler, positive, negative, latent_image, steps, cfg, cut):
    """ComfyUI's common_ksampler on sdrt's loop: ComfyUI's sampler (its rules) over the cut
    schedule; noise for the whole batch from the seed; the latents as given when no step runs."""
    pipeline = model.pipeline
    for entry in (*positive.entries, *negative.entries):
        check_clip(entry.clip, pipeline)
    samples = latent_image.samples
    batch = samples.shape[0]
    context.check_limits(steps, batch)  # the server's --max-steps and --max-images
    factor = pipeline.manifest.vae_scale_factor
    settings = dict(
        negative_prompt=negative.text,
        steps=steps,
        guidance_scale=cfg,
        height=samples.shape[2] * factor,
        width=samples.shape[3] * factor,
        num_images=batch,
        seed=seed % SEED_BITS_KEPT,  # ComfyUI's prepare_noise: the whole batch from one CPU generator
        sampler=context.sampler_for(sampler_name),
        schedule=scheduler,
        clip_skip=positive.clip.clip_skip,
        loras=tuple(_loras_of(model, positive.clip)),
        ksampler_steps=replace(cut, seed=seed, noise_indices=latent_image.batch_index),
        emphasis=COMFYUI_EMPHASIS,  # CLIPTextEncode's weights, ComfyUI's rule (no mean restoration)
        confined_names=True,  # a client's LoRA names: --lora-dir's files only
    )
    if latent_image.noise_mask is not None:
        settings["ksampler_steps"] = replace(settings["ksampler_steps"], noise_mask=latent_mask(latent_image))
    if not latent_image.empty or latent_image.noise_mask is not None:
        # ComfyUI adds the noise to the latent image: sdrt's image-to-image start
        settings.update(init_latents=samples, strength=1.0)
    settings = flow_settings(pipeline, model, positive, negative, latent_image, cfg, settings)  # FLUX.1, SD3
    request = GenerationRequest(positive.text, **settings)
    sampler = pipeline.new_sampler(request)
    if len(sampler.timesteps) == 0:
        return (latent_image,)  # ComfyUI's KSampler returns the latents when its cut leaves no step
    entries = conditioning_entries(positive, negative, sampler.model, pipeline)  # ComfyUI's lists, areas
    if entries is not None:
        request = replace(request, conditionings=entries)
    if positive.controls or negative.controls:
        units = control_units(positive, negative, sampler.model, settings["height"], settings["width"])
        request = replace(request, controlnets=units)
    watch = dict(progress=context.progress, cancel=context.cancel, preview=context.preview)
    result = pipeline.run(request, **watch, latents_only=True)
    # common_ksampler's latent.copy(): the noise mask and batch index go on with the samples
    return (replace(latent_image, samples=np.asarray(result.latents, np.float32), empty=False),)


def latent_mask(latent: Latent) -> np.ndarray:
    """comfy.utils.reshape_mask: the noise mask bilinear at the latents' size, one per image."""
    assert latent.noise_mask is not None
    samples, mask = latent.samples, latent.noise_mask
    resized = resize_latents(mask.reshape(-1, 1, *mask.shape[-2:]), *samples.shape[-2:], "bilinear")
    repeats = -(-samples.shape[0] // resized.shape[0])
    return np.concatenate([resized] * repeats)[: samples.shape[0]]


@node(
    "KSampler",
    "sampling",
    {
        "model": Input(MODEL),
        "seed": Input("INT", 0, 0, INT_MAX),
        **SAMPLER_INPUTS,
        "denoise": Input("FLOAT", 1.0, 0.0, 1.0, 0.01),
    },
    (LATENT,),
)
def ksampler(context, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise):
    if denoise <= 0.0:
        return (latent_image,)
    cut = KSamplerSteps(denoise=denoise)
    return _sample(context, model, seed, sampler_name, scheduler, positive, negative, latent_image, steps, cfg, cut)


@node(
    "KSamplerAdvanced",
    "sampling",
    {
        "model": Input(MODEL),
        "add_noise": Input(lambda context: [ENABLE, DISABLE]),
        "noise_seed": Input("INT", 0, 0, INT_MAX),
        **SAMPLER_INPUTS,
        "start_at_step": Input("INT", 0, 0, MAX_ADVANCED_STEP),
        "end_at_step": Input("INT", MAX_ADVANCED_STEP, 0, MAX_ADVANCED_STEP),
        "return_with_leftover_noise": Input(lambda context: [DISABLE, ENABLE]),
    },
    (LATENT,),
)
def ksampler_advanced(
    context,
    model,
    add_noise,
    noise_seed,
    steps,
    cfg,
    sampler_name,
    scheduler,
    positive,
    negative,
    latent_image,
    start_at_step,
    end_at_step,
    return_with_leftover_noise,
):
    cut = KSamplerSteps(
        start_step=start_at_step,
        last_step=end_at_step,
        force_full_denoise=return_with_leftover_noise != ENABLE,
        add_noise=add_noise != DISABLE,
    )
    arguments = (positive, negative, latent_image, steps, cfg, cut)
    return _sample(context, model, noise_seed, sampler_name, scheduler, *arguments)
