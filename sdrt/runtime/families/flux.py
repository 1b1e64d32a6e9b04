"""FLUX.1 (dev and schnell), as diffusers' `FluxPipeline` runs it:

- text (sdrt.runtime.text.flux_encoders): T5's hidden states condition the transformer
  (`encoder_hidden_states`), CLIP-L's pooled output is `pooled_projections`;
- the transformer denoises 2x2-packed latents with RoPE position ids
  (sdrt.runtime.families.flux_latents); the loop's latents stay unpacked;
- guidance: a guidance-distilled model (dev) takes the guidance scale as the `guidance` input
  of every row, one batch; schnell takes none. Real classifier-free guidance runs only with
  `true_cfg_scale` > 1 and a negative prompt (FluxPipeline's do_true_cfg): then the negative
  rows are a batch half and the predictions combine as n + scale * (p - n);
- sampling: flow matching (`flow_euler`), the sigmas linspace(1, 1 / steps, steps) shifted by
  mu, which grows linearly with the image's token count between the scheduler config's
  base/max image sequence lengths (FluxPipeline's calculate_shift);
- the VAE decodes latents / scaling_factor + shift_factor (both from its config).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from sdrt.errors import GenerationError, ModelFolderError
from sdrt.runtime.families.base import DenoiserCall, Family, RowFeeds
from sdrt.runtime.manifest import (
    DENOISER_OUTPUT,
    DENOISER_TIMESTEP,
    GUIDANCE,
    HIDDEN_STATES,
    LAST_HIDDEN,
    POOLED_PROJECTIONS,
    TRANSFORMER,
    UNET_CONTEXT,
    Manifest,
)
from sdrt.runtime.schedulers.spaces import FLOW

if TYPE_CHECKING:
    from sdrt.runtime.engines import Engine
    from sdrt.runtime.request import GenerationRequest, ResolvedRequest
    from sdrt.runtime.text.encoders import TextEncoding

#: Image tokens are 2x2 patches of latents.
PATCH = 2
FLUX_FEATURES = frozenset({"img2img", "init_latents", "inpainting"})


def flux_sigmas(steps: int) -> np.ndarray:
    """FluxPipeline's sigmas before the shift: linspace(1, 1 / steps, steps)."""
    return np.linspace(1.0, 1 / steps, steps)


class Flux(Family):
    name = "flux"
    display_name = "FLUX.1"
    denoiser = DenoiserCall(TRANSFORMER, HIDDEN_STATES, DENOISER_TIMESTEP, DENOISER_OUTPUT)
    hidden_output = LAST_HIDDEN
    text_sequence_feed = UNET_CONTEXT
    own_settings: ClassVar[tuple[str, ...]] = ("true_cfg_scale",)
    features = FLUX_FEATURES
    sampler_space = FLOW
    default_sampler = "flow_euler"
    #: FluxPipeline's default guidance_scale (dev's distilled guidance; schnell ignores it).
    default_guidance = 3.5
    #: The text encoders of the flux section, in order (CLIP-L's pooled output, T5's states).
    text_encoder_roles: ClassVar[tuple[str, ...]] = ("clip", "t5")
    #: The encoder whose hidden states condition the transformer, as `sdrt info` names it.
    text_label: ClassVar[str] = "T5"

    def prompt_tokens(self, manifest: Manifest) -> int:
        """The longest prompt in tokens: T5's padded length less its end token."""
        return _flux(manifest).max_sequence_length - 1

    def text_encoders(self, manifest: Manifest) -> list[tuple[str, str]]:
        flux = _flux(manifest)
        return list(zip(flux.text_encoders, flux.tokenizers))

    def load_text_encoders(self, folder, manifest: Manifest, embeddings):
        from sdrt.runtime.text.flux_encoders import FluxTextEncoders

        return FluxTextEncoders.load(folder, manifest, embeddings)

    def text_feeds(self, encoding: TextEncoding) -> dict[str, np.ndarray]:
        if encoding.pooled is None:
            raise ModelFolderError("FLUX's CLIP encoder gives no pooled output; re-export the model")
        return {UNET_CONTEXT: encoding.hidden, POOLED_PROJECTIONS: encoding.pooled}

    def row_feeds(self, manifest: Manifest, resolved: ResolvedRequest) -> RowFeeds:
        """dev: the guidance scale on every row (the negative ones of true CFG too, as diffusers)."""
        if not _flux(manifest).guidance_embeds:
            return {"negative": {}, "positive": {}}
        guidance = {GUIDANCE: np.array(resolved.request.guidance_scale, np.float32)}
        return {"negative": dict(guidance), "positive": dict(guidance)}

    def inpainting_denoiser(self, manifest: Manifest) -> bool:
        return False

    def cfg_scale(self, request: GenerationRequest) -> float:
        """True CFG needs true_cfg_scale > 1 and a negative prompt (FluxPipeline's do_true_cfg)."""
        if request.true_cfg_scale is None or request.negative_prompt is None:
            return 1.0
        return float(request.true_cfg_scale)

    def guider(self, engine: Engine, resolved: ResolvedRequest, warnings: list[str]):
        from sdrt.runtime.loop.guiders import ClassifierFreeGuidance, NoGuidance

        request = resolved.request
        if request.negative_prompt is not None and not resolved.guided:
            warnings.append(
                "FLUX.1 reads a negative prompt only with true CFG (true_cfg_scale > 1, two transformer "
                "batches a step), as diffusers: it was not used"
            )
        return ClassifierFreeGuidance(self.cfg_scale(request)) if resolved.guided else NoGuidance()

    def make_denoiser(self, engine: Engine):
        from sdrt.runtime.families.flux_latents import PackedDenoiser

        return PackedDenoiser(engine, self.denoiser)

    def set_timesteps(self, sampler, steps: int, manifest: Manifest, resolved: ResolvedRequest | None) -> None:
        """FluxPipeline's sigmas, shifted by mu for the image's token count when the scheduler
        shifts dynamically."""
        mu = None
        if sampler.config.use_dynamic_shifting:
            if resolved is None:
                raise GenerationError("FLUX's sampler needs the image size (its shift depends on it)")
            patch = manifest.vae_scale_factor * PATCH
            mu = sampler.dynamic_shift_mu((resolved.height // patch) * (resolved.width // patch))
        sampler.set_timesteps(steps, mu=mu, sigmas=flux_sigmas(steps))

    def skipped_steps(self, steps: int, strength: float) -> int:
        """FluxImg2ImgPipeline's get_timesteps: the skipped steps rounded down (SD rounds the kept)."""
        return int(max(steps - min(steps * strength, steps), 0))

    def check_request(self, request: GenerationRequest, manifest: Manifest) -> None:
        super().check_request(request, manifest)
        scale = request.true_cfg_scale
        if scale is not None and (
            not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale) or scale < 0
        ):
            raise GenerationError(f"true CFG scale must be a finite number >= 0, got {scale!r}", "true_cfg_scale")

    def check_manifest(self, manifest: Manifest) -> str | None:
        if manifest.flux is None:
            return f"family {manifest.family!r} needs the flux section"
        if len(manifest.flux.text_encoders) != len(self.text_encoder_roles):
            return f"family {manifest.family!r} needs {len(self.text_encoder_roles)} text encoders in the flux section"
        return None


def _flux(manifest: Manifest):
    if manifest.flux is None:
        raise ModelFolderError(f"family {manifest.family!r} needs the manifest's flux section; re-export the model")
    return manifest.flux
