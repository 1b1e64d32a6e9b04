"""Stable Diffusion 3 / 3.5 (SD3 Medium, SD3.5 Large, Large Turbo and Medium), as diffusers'
`StableDiffusion3Pipeline` runs them:

- text (sdrt.runtime.text.sd3_encoders): CLIP-L's and CLIP-G's penultimate states joined,
  padded to T5's width and joined with T5's states (or its zeros) are `encoder_hidden_states`;
  the two projected pooled outputs joined are `pooled_projections`;
- the transformer denoises [batch, channels, height, width] latents (it patches them itself);
  its `skip_layers` mask input skips no layer here (skip-layer guidance sets it);
- guidance: classifier-free guidance on the guidance scale (guided when > 1, the negative
  prompt "" unless given), negative rows first, as the pipeline;
- sampling: flow matching (`flow_euler`), the scheduler's own sigmas (a fixed shift; a
  dynamic one from the image's patch count when its config asks);
- the VAE decodes latents / scaling_factor + shift_factor (both from its config);
- modes: image-to-image and inpainting as StableDiffusion3Img2ImgPipeline and
  StableDiffusion3InpaintPipeline (the 16-channel transformer denoises everything and the kept
  region is blended back after each step: sdrt.runtime.loop.modes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sdrt.errors import GenerationError, ModelFolderError
from sdrt.runtime.families.base import DenoiserCall, Family
from sdrt.runtime.manifest import (
    DENOISER_OUTPUT,
    DENOISER_TIMESTEP,
    HIDDEN_STATES,
    LATENT_HEIGHT,
    POOLED_PROJECTIONS,
    TRANSFORMER,
    UNET_CONTEXT,
    Manifest,
)
from sdrt.runtime.schedulers.spaces import FLOW
from sdrt.runtime.sd3_spec import SKIP_LAYERS, Sd3Spec

if TYPE_CHECKING:
    from sdrt.runtime.engines import Engine
    from sdrt.runtime.request import GenerationRequest
    from sdrt.runtime.request_resolve import ResolvedRequest
    from sdrt.runtime.text.encoders import TextEncoding

#: Image tokens are patches of latents (the transformer's patch_size; 2 for every SD3 model).
SD3_FEATURES = frozenset({"img2img", "init_latents", "inpainting", "lora", "skip_layer_guidance", "taylorseer_cache"})


class StableDiffusion3(Family):
    name = "sd3"
    display_name = "Stable Diffusion 3"
    text_encoder_roles = ("clip_l", "clip_g", "t5")  # `sdrt tokenize`'s labels; T5 when exported
    denoiser = DenoiserCall(TRANSFORMER, HIDDEN_STATES, DENOISER_TIMESTEP, DENOISER_OUTPUT)
    text_sequence_feed = UNET_CONTEXT
    own_settings = ("skip_layer_guidance", "t5", "max_sequence_length")
    features = SD3_FEATURES
    sampler_space = FLOW
    default_sampler = "flow_euler"
    #: StableDiffusion3Pipeline has clip_skip (sdrt.runtime.text.sd3_text_options).
    clip_skip_applies = True
    #: StableDiffusion3Pipeline's default guidance_scale.
    default_guidance = 7.0
    #: StableDiffusion3Pipeline.load_lora_weights changes the transformer and both CLIPs, never T5.
    lora_components = (TRANSFORMER, "text_encoder", "text_encoder_2")

    def text_encoders(self, manifest: Manifest) -> list[tuple[str, str]]:
        spec = _sd3(manifest)
        pairs = list(zip(spec.clip_encoders, spec.clip_tokenizers))
        if spec.t5_encoder is not None and spec.t5_tokenizer is not None:
            pairs.append((spec.t5_encoder, spec.t5_tokenizer))
        return pairs

    def load_text_encoders(self, folder, manifest: Manifest, embeddings):
        from sdrt.runtime.text.sd3_encoders import Sd3TextEncoders

        return Sd3TextEncoders.load(folder, manifest, embeddings)

    def text_feeds(self, encoding: TextEncoding) -> dict[str, np.ndarray]:
        if encoding.pooled is None:
            raise ModelFolderError("SD3's CLIP encoders give no pooled output; re-export the model")
        return {UNET_CONTEXT: encoding.hidden, POOLED_PROJECTIONS: encoding.pooled}

    def guider(self, engine: Engine, resolved: ResolvedRequest, warnings: list[str]):
        from sdrt.runtime.features.skip_layers import SkipLayerGuider
        from sdrt.runtime.loop.guiders import guider_for

        request = resolved.request
        settings = request.skip_layer_guidance
        if settings is None:
            return guider_for(engine, request, resolved.guided, warnings)
        if not resolved.guided:
            warnings.append("skip-layer guidance runs only with classifier-free guidance (guidance > 1): not used")
            return guider_for(engine, request, resolved.guided, warnings)
        return SkipLayerGuider(self.cfg_scale(request), settings, request.steps, _layer_count(engine))

    def check_request(self, request: GenerationRequest, manifest: Manifest) -> None:
        from sdrt.runtime.text.sd3_text_options import check_clip_skip, check_max_sequence_length

        super().check_request(request, manifest)
        if request.max_sequence_length is not None:
            check_max_sequence_length(request.max_sequence_length, _sd3(manifest))
        if isinstance(request.clip_skip, int) and request.clip_skip > 1:  # else refused when the text options are read
            check_clip_skip(request.clip_skip, manifest, _sd3(manifest))
        if request.t5 is not None and not isinstance(request.t5, bool):
            raise GenerationError(f"t5 must be true or false, got {request.t5!r}", "t5")
        if request.t5 and _sd3(manifest).t5_encoder is None:
            raise GenerationError("this SD3 export has no T5 (exported with --no-t5); leave t5 unset or false", "t5")
        settings = request.skip_layer_guidance
        if settings is not None:
            settings.check(_sd3(manifest).transformer_layers)
            if request.init_image is not None or request.latents is not None:
                raise GenerationError(
                    "skip-layer guidance runs in text-to-image only (as StableDiffusion3Pipeline)",
                    "skip_layer_guidance",
                )

    def inpainting_denoiser(self, manifest: Manifest) -> bool:
        return False

    def make_denoiser(self, engine: Engine):
        from sdrt.runtime.families.sd3_denoiser import SkipMaskDenoiser

        return SkipMaskDenoiser(engine, self.denoiser, _layer_count(engine))

    def set_timesteps(self, sampler, steps: int, manifest: Manifest, resolved: ResolvedRequest | None) -> None:
        """The scheduler's sigmas; with use_dynamic_shifting, shifted by mu for the image's
        patch count (StableDiffusion3Pipeline's calculate_shift)."""
        mu = None
        if sampler.config.use_dynamic_shifting:
            if resolved is None:
                raise GenerationError("this SD3 sampler needs the image size (its shift depends on it)")
            patch = manifest.vae_scale_factor * _patch(manifest)
            mu = sampler.dynamic_shift_mu((resolved.height // patch) * (resolved.width // patch))
        sampler.set_timesteps(steps, mu=mu)

    def skipped_steps(self, steps: int, strength: float) -> int:
        """StableDiffusion3Img2ImgPipeline's get_timesteps: the skipped steps rounded down."""
        return int(max(steps - min(steps * strength, steps), 0))

    def check_manifest(self, manifest: Manifest) -> str | None:
        if manifest.sd3 is None:
            return f"family {manifest.family!r} needs the sd3 section"
        return None


def _layer_count(engine: Engine) -> int:
    """The transformer's layers: its skip mask's length."""
    (layers,) = next(spec.shape for spec in engine.spec.inputs if spec.name == SKIP_LAYERS)
    return int(layers)


def _patch(manifest: Manifest) -> int:
    """The latent side's multiple: the transformer's patch size, as the export recorded it."""
    return manifest.dims[LATENT_HEIGHT].multiple


def _sd3(manifest: Manifest) -> Sd3Spec:
    if manifest.sd3 is None:
        raise ModelFolderError(f"family {manifest.family!r} needs the manifest's sd3 section; re-export the model")
    return manifest.sd3
