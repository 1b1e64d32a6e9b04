"""FLUX.1 (dev and schnell), as diffusers' `FluxPipeline` runs it:

- text (sdrt.runtime.text.flux_encoders): T5's hidden states condition the transformer
  (`encoder_hidden_states`), CLIP-L's pooled output is `pooled_projections`;
- the transformer denoises 2x2-packed latents with RoPE position ids
  (sdrt.runtime.families.flux_latents); the loop's latents stay unpacked;
- guidance: a guidance-distilled model (dev) takes the guidance scale as the `guidance` input
  of every row, one batch; schnell takes none. Real classifier-free guidance runs only with
  `true_cfg_scale` > 1 and a negative prompt (FluxPipeline's do_true_cfg): then the negative
  rows are a batch half and the predictions combine as n + scale * (p - n);
- sampling: flow matching (`flow_euler`; flow_heun, flow_dpmpp_2m, flow_unipc too), the sigmas
  linspace(1, 1 / steps, steps) shifted by mu, which grows linearly with the image's token
  count between the scheduler config's base/max image sequence lengths (FluxPipeline's calculate_shift);
- the VAE decodes latents / scaling_factor + shift_factor (both from its config);
- FLUX.1 Fill (the manifest's `conditioning_channels`: sdrt.runtime.families.flux_fill) takes
  the mask and the masked image as extra channels; FLUX.1 Kontext (`kontext`:
  sdrt.runtime.families.flux_kontext) joins a reference image's tokens to the sequence.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from sdrt.errors import GenerationError, ModelFolderError
from sdrt.runtime.families.base import DenoiserCall, Family, RowFeeds
from sdrt.runtime.manifest import (
    CLIP_TEXT_ENCODER,
    DENOISER_OUTPUT,
    DENOISER_TIMESTEP,
    GUIDANCE,
    HEIGHT,
    HIDDEN_STATES,
    IMAGE_TOKENS,
    LAST_HIDDEN,
    POOLED_PROJECTIONS,
    TRANSFORMER,
    UNET_CONTEXT,
    Manifest,
)
from sdrt.runtime.schedulers.spaces import FLOW

if TYPE_CHECKING:
    from sdrt.runtime.engines import Engine
    from sdrt.runtime.request import GenerationRequest
    from sdrt.runtime.request_resolve import ResolvedRequest
    from sdrt.runtime.text.encoders import TextEncoding

#: Image tokens are 2x2 patches of latents.
PATCH = 2
#: FluxFillPipeline's default guidance_scale (FluxPipeline's is the family's 3.5).
FILL_GUIDANCE = 30.0
FLUX_FEATURES = frozenset({"img2img", "init_latents", "inpainting", "lora", "first_block_cache", "taylorseer_cache"})


def flux_sigmas(steps: int) -> np.ndarray:
    """FluxPipeline's sigmas before the shift: linspace(1, 1 / steps, steps)."""
    return np.linspace(1.0, 1 / steps, steps)


class Flux(Family):
    name = "flux"
    display_name = "FLUX.1"
    denoiser = DenoiserCall(TRANSFORMER, HIDDEN_STATES, DENOISER_TIMESTEP, DENOISER_OUTPUT)
    hidden_output = LAST_HIDDEN
    text_sequence_feed = UNET_CONTEXT
    own_settings: ClassVar[tuple[str, ...]] = ("true_cfg_scale", "kontext_auto_resize", "kontext_max_area")
    features = FLUX_FEATURES
    sampler_space = FLOW
    default_sampler = "flow_euler"
    #: FluxPipeline's default guidance_scale (dev's distilled guidance; schnell ignores it).
    default_guidance = 3.5
    #: The text encoders of the flux section, in order (CLIP-L's pooled output, T5's states).
    text_encoder_roles: ClassVar[tuple[str, ...]] = ("clip", "t5")
    #: FluxPipeline.load_lora_weights changes the transformer and CLIP, never T5.
    lora_components: ClassVar[tuple[str, ...]] = (TRANSFORMER, CLIP_TEXT_ENCODER)
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

    def distilled_guidance(self, manifest: Manifest) -> bool:
        return _flux(manifest).guidance_embeds

    def guidance_default(self, manifest: Manifest) -> float | None:
        fill = manifest.flux is not None and manifest.flux.conditioning_channels > 0
        return FILL_GUIDANCE if fill else self.default_guidance

    def reference_tokens(self, manifest: Manifest, image_tokens: tuple[int, int, int]) -> tuple[int, int, int]:
        """Kontext: one reference, encoded at its own size, at most the largest image's tokens (the
        export doubles its range so); opt a reference of the opt size. min none, so a reference
        smaller than the smallest image still fits."""
        if manifest.flux is None or not manifest.flux.kontext:
            return 0, 0, 0
        return 0, image_tokens[1], image_tokens[2]

    def output_size(self, request: GenerationRequest, manifest: Manifest, height: int, width: int) -> tuple[int, int]:
        """Kontext: the requested size's aspect ratio (the native size's when none is given) at
        max_area pixels, as FluxKontextPipeline (sdrt.runtime.families.flux_kontext_sizes)."""
        if manifest.flux is None or not manifest.flux.kontext:
            return height, width
        from sdrt.runtime.families.flux_kontext_sizes import max_area, output_size

        height = manifest.native_height if request.height is None else height
        width = manifest.native_width if request.width is None else width
        return output_size(height, width, max_area(request), manifest.dims[HEIGHT].multiple)

    def takes_strength(self, manifest: Manifest) -> bool:
        return not _flux(manifest).kontext

    def inpainting_denoiser(self, manifest: Manifest) -> bool:
        """FLUX.1 Fill; FLUX.1 dev inpaints by blending (FluxInpaintPipeline). Asked before the
        request's features are checked, so a manifest without the flux section (which load
        refuses) answers no rather than failing here."""
        return manifest.flux is not None and manifest.flux.conditioning_channels > 0

    def own_mode(self, manifest: Manifest, resolved: ResolvedRequest):
        """Kontext's edit of its reference image; Fill's inpainting with the mask as channels."""
        spec = _flux(manifest)
        if spec.kontext:
            from sdrt.runtime.families.flux_kontext import kontext_mode

            dims = manifest.dims
            return kontext_mode(manifest.vae_scale_factor, dims[HEIGHT].multiple, dims[IMAGE_TOKENS].max)
        if spec.conditioning_channels and resolved.mask is not None:
            from sdrt.runtime.families.flux_fill import fill_mode
            from sdrt.runtime.loop.modes import first_step

            return fill_mode(manifest.vae_scale_factor, lambda request, sampler: first_step(request, sampler, self))
        return None

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
        # FluxPipeline passes its sigmas to the schedulers that take them (not to use_flow_sigmas ones).
        sampler.set_timesteps(steps, mu=mu, sigmas=flux_sigmas(steps) if sampler.takes_sigmas else None)

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
        spec = manifest.flux  # None only on a manifest check_manifest refuses at load
        if spec is not None and spec.conditioning_channels and request.mask_image is None:
            raise GenerationError(
                "this is a FLUX.1 Fill model: give it an image and a mask to fill (init_image and mask_image)",
                "mask_image",
            )
        if spec is not None and spec.kontext:
            _check_kontext(request)
        elif spec is not None:
            for name in ("kontext_auto_resize", "kontext_max_area"):
                if getattr(request, name) is not None:
                    raise GenerationError(f"{name} applies to FLUX.1 Kontext models only", name)

    def check_manifest(self, manifest: Manifest) -> str | None:
        if manifest.flux is None:
            return f"family {manifest.family!r} needs the flux section"
        if len(manifest.flux.text_encoders) != len(self.text_encoder_roles):
            return f"family {manifest.family!r} needs {len(self.text_encoder_roles)} text encoders in the flux section"
        return None


def _check_kontext(request: GenerationRequest) -> None:
    """A Kontext request edits one reference image: it needs one, and takes nothing of img2img's."""
    if request.init_image is None:
        raise GenerationError(
            "this is a FLUX.1 Kontext model: it edits a reference image, give one (init_image, --image)", "init_image"
        )
    for name in ("mask_image", "init_latents", "strength"):
        if getattr(request, name) is not None:
            raise GenerationError(f"FLUX.1 Kontext edits its reference image as a whole: it takes no {name}", name)


def _flux(manifest: Manifest):
    if manifest.flux is None:
        raise ModelFolderError(f"family {manifest.family!r} needs the manifest's flux section; re-export the model")
    return manifest.flux
