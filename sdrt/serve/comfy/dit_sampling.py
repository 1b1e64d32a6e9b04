"""KSampler and KSamplerAdvanced on FLUX.1 and SD3 exports, as ComfyUI samples its flow models:
ComfyUI's samplers with CONST model sampling (sdrt.runtime.schedulers.kdiffusion.comfy_flow),
the model's own sampling or the workflow's ModelSamplingFlux / ModelSamplingSD3 patch, the
latent image always noised as noise_scaling does (EmptySD3LatentImage's zeros stay zeros:
ComfyUI does not shift an empty latent), and the guidance:

- FLUX.1: FluxGuidance's value is the distilled guidance (ComfyUI's FLUX default 3.5 without
  one); KSampler's cfg above 1 is real classifier-free guidance with the negative prompt
  (sdrt's true CFG), at 1 the negative is not run (ComfyUI skips it there too);
- SD3: cfg is classifier-free guidance; DualCLIPLoader's "sd3" runs without T5, TripleCLIPLoader
  with it.
Also the check that a sampler's CLIP is its model's text encoders."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from sdrt.runtime.schedulers import COMFY_FLOW_SAMPLERS, SAMPLERS
from sdrt.runtime.schedulers.kdiffusion.comfy_flow_sigmas import DISCRETE_FLOW, FLUX_SAMPLING, FlowModelSampling
from sdrt.runtime.schedulers.spaces import FLOW
from sdrt.serve.comfy.sd_nodes import NodeError
from sdrt.serve.comfy.values import Conditioning, Latent, ModelHandle

#: comfy/supported_models.py's sampling_settings: FLUX.1 dev's ModelSamplingFlux shift (its
#: default), schnell's, SD3's (and SD3.5's) discrete-flow shift.
FLUX_DEV_SHIFT, FLUX_SCHNELL_SHIFT, SD3_MODEL_SHIFT = 1.15, 1.0, 3.0
#: model_base.Flux.extra_conds: the guidance of a conditioning without FluxGuidance.
FLUX_DEFAULT_GUIDANCE = 3.5
#: The flow families KSampler runs.
FLOW_FAMILIES = ("flux", "sd3")


def check_clip(clip: ModelHandle, pipeline) -> None:
    """A sampler's conditioning must come from its model's text encoders: the same export's, or
    ComfyUI's encoder files of the model's family (and for SD3 with T5, an export with T5)."""
    family = pipeline.manifest.family
    files = clip.encoders
    if files is None:
        if clip.pipeline is not pipeline:
            raise NodeError("the conditioning comes from another checkpoint's CLIP than the sampler's model")
        return
    if files.family != family:
        raise NodeError(
            f"{files.node} ({files.clip_type}: {', '.join(files.names)}) loads {files.family} text encoders; "
            f"the sampler's model is a {family} export"
        )
    if files.t5 and pipeline.manifest.sd3 is not None and pipeline.manifest.sd3.t5_encoder is None:
        raise NodeError(f"{files.node} loads T5, but the sampler's SD3 export has none (exported with --no-t5)")


def model_sampling(model: ModelHandle, pipeline) -> FlowModelSampling:
    """The workflow's patch, else the model's own (ComfyUI's sampling_settings)."""
    if model.model_sampling is not None:
        return model.model_sampling
    if pipeline.manifest.family == "flux":
        distilled = pipeline.family.distilled_guidance(pipeline.manifest)
        return FlowModelSampling(FLUX_SAMPLING, FLUX_DEV_SHIFT if distilled else FLUX_SCHNELL_SHIFT)
    return FlowModelSampling(DISCRETE_FLOW, SD3_MODEL_SHIFT)


def model_latents(latent: Latent, manifest) -> np.ndarray:
    """The latent image in the model's space: an empty latent is ComfyUI's raw zeros at the
    model's channels (fix_empty_latent_channels), which CFGGuider.inner_sample leaves unshifted
    (process_latent_in only when count_nonzero > 0): zeros in the model's space too."""
    samples = latent.samples
    if latent.empty:
        return np.zeros((samples.shape[0], manifest.latent_channels, *samples.shape[2:]), np.float32)
    if samples.shape[1] != manifest.latent_channels:
        raise NodeError(
            f"the latent image has {samples.shape[1]} channels; the sampler's model takes {manifest.latent_channels}"
        )
    return samples


def request_settings(
    pipeline, model: ModelHandle, positive: Conditioning, negative: Conditioning, latent: Latent, cfg: float, settings
) -> dict:
    """The sampler's request settings for a flow model (others' unchanged)."""
    manifest = pipeline.manifest
    if manifest.sampler_space != FLOW:
        return settings
    family = manifest.family
    if family not in FLOW_FAMILIES:
        raise NodeError(f"KSampler runs the flow models of {', '.join(FLOW_FAMILIES)}; this is a {family} export")
    comfy_name = SAMPLERS[settings["sampler"]].comfy_name
    if comfy_name not in COMFY_FLOW_SAMPLERS:
        raise NodeError(
            f"sampler_name: {comfy_name} on a flow model is ComfyUI's rectified-flow variant, not run by sdrt; "
            f"choose one of {', '.join(map(str, COMFY_FLOW_SAMPLERS))}"
        )
    if cfg < 1:
        raise NodeError(f"cfg: below 1 ({cfg}) sdrt runs no classifier-free guidance on {family}; use 1 or more")
    steps = replace(settings["ksampler_steps"], model_sampling=model_sampling(model, pipeline))
    settings = {
        **settings,
        "sampler": COMFY_FLOW_SAMPLERS[comfy_name],
        "ksampler_steps": steps,
        "init_latents": model_latents(latent, manifest),  # noise_scaling mixes it in at the first level
        "strength": 1.0,
    }
    if family == "flux":
        guidance = FLUX_DEFAULT_GUIDANCE if positive.guidance is None else positive.guidance
        negative_guidance = FLUX_DEFAULT_GUIDANCE if negative.guidance is None else negative.guidance
        if cfg > 1 and negative_guidance != guidance:
            raise NodeError(
                f"FluxGuidance: sdrt gives the negative rows the positive's guidance ({guidance}); "
                f"the negative conditioning has {negative_guidance}"
            )
        settings.update(guidance_scale=guidance, true_cfg_scale=cfg if cfg > 1 else None)
        if cfg == 1:
            settings["negative_prompt"] = None
    elif positive.clip.encoders is not None and positive.clip.encoders.t5 is not None:
        settings["t5"] = positive.clip.encoders.t5
    return settings
