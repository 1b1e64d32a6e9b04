"""FLUX.2 [klein], as diffusers' `Flux2KleinPipeline` runs it:

- text (sdrt.runtime.text.flux2_encoders): a Qwen3 model's hidden states at several layers,
  joined per token, over the chat-wrapped prompt padded to max_sequence_length; no pooled
  output, no guidance embedding;
- the transformer denoises the patchified latents as tokens with 4-axis RoPE ids
  (sdrt.runtime.families.flux2_latents); the VAE graphs patchify and normalise
  (sdrt.export.flux2), so the loop's latents are the pipeline's own and the VAE factors are 1, 0;
- guidance: a distilled model (`is_distilled`) runs one batch and ignores the guidance scale
  (a warning when it is > 1, as the pipeline logs); the base model runs real classifier-free
  guidance when the scale is > 1, with the negative prompt "" (the pipeline's; a request's own
  negative prompt is used when given), n + scale * (p - n);
- sampling: flow matching (`flow_euler`), the sigmas linspace(1, 1 / steps, steps) shifted by
  FLUX.2's empirical mu of the image's tokens and the step count (compute_empirical_mu) when the
  scheduler shifts dynamically.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np

from sdrt.errors import GenerationError, ModelFolderError
from sdrt.runtime.families.base import RowFeeds
from sdrt.runtime.families.flux import Flux, flux_sigmas
from sdrt.runtime.manifest import TRANSFORMER, UNET_CONTEXT, Manifest

if TYPE_CHECKING:
    from sdrt.runtime.engines import Engine
    from sdrt.runtime.request import GenerationRequest
    from sdrt.runtime.request_resolve import ResolvedRequest
    from sdrt.runtime.text.encoders import TextEncoding

FLUX2_FEATURES = frozenset({"reference_images", "lora", "taylorseer_cache"})


class Flux2(Flux):
    name = "flux2"
    display_name = "FLUX.2 [klein]"
    own_settings: ClassVar[tuple[str, ...]] = ()
    features = FLUX2_FEATURES
    #: Flux2KleinPipeline's default guidance_scale (the base model's CFG; distilled ones ignore it).
    default_guidance = 4.0
    text_encoder_roles = ("qwen3",)
    #: Flux2KleinPipeline.load_lora_weights (Flux2LoraLoaderMixin) changes the transformer only.
    lora_components = (TRANSFORMER,)
    #: FLUX.2's own BFL names (Flux2LoraLoaderMixin's converters: ff.linear_in, to_qkv_mlp_proj, ...).
    lora_bfl_layout = "flux2"

    def text_encoders(self, manifest: Manifest) -> list[tuple[str, str]]:
        spec = _flux2(manifest)
        return [(spec.text_encoder, spec.tokenizer)]

    def load_text_encoders(self, folder, manifest: Manifest, embeddings):
        from sdrt.runtime.text.flux2_encoders import Flux2TextEncoders

        return Flux2TextEncoders.load(folder, manifest, embeddings)

    def text_feeds(self, encoding: TextEncoding) -> dict[str, np.ndarray]:
        return {UNET_CONTEXT: encoding.hidden}

    def row_feeds(self, manifest: Manifest, resolved: ResolvedRequest) -> RowFeeds:
        return {"negative": {}, "positive": {}}

    def cfg_scale(self, request: GenerationRequest) -> float:
        return float(request.guidance_scale)

    def export_cfg_scale(self, request: GenerationRequest, manifest: Manifest) -> float:
        """Flux2KleinPipeline's do_classifier_free_guidance: scale > 1 and not distilled."""
        spec = manifest.flux2  # a loaded export has it (check_manifest)
        return 1.0 if spec is not None and spec.distilled else self.cfg_scale(request)

    def guider(self, engine: Engine, resolved: ResolvedRequest, warnings: list[str]):
        from sdrt.runtime.loop.guiders import ClassifierFreeGuidance, NoGuidance

        asked = resolved.request.guidance_scale
        if resolved.cfg_scale == 1.0 and asked > 1 and asked != self.default_guidance:  # not diffusers' default
            warnings.append(
                f"guidance scale {asked:g} is ignored by this distilled FLUX.2 "
                "model (one transformer batch a step), as diffusers ignores it"
            )
        return ClassifierFreeGuidance(float(resolved.request.guidance_scale)) if resolved.guided else NoGuidance()

    def step_hooks(self, pipeline, resolved: ResolvedRequest) -> list:
        """The reference images' tokens on every call (sdrt.runtime.features.references)."""
        from sdrt.runtime.features.references import PARAM, ReferenceImages, open_references

        sources = resolved.request.reference_images
        if sources is None:
            return []
        encoder = pipeline.optional_engine("vae_encoder")
        if encoder is None:
            raise GenerationError("this export has no vae_encoder; re-export the model to use reference images", PARAM)
        return [ReferenceImages(encoder, open_references(sources), pipeline.manifest.vae_scale_factor)]

    def reference_tokens(self, manifest: Manifest, image_tokens: tuple[int, int, int]) -> tuple[int, int, int]:
        """Up to MAX_REFERENCES references, each at most the native area (larger ones are resized
        to it: sdrt.runtime.features.references), whatever the image's size; none at min and opt."""
        from sdrt.runtime.features.references import MAX_REFERENCES

        factor = manifest.vae_scale_factor  # one token a latent pixel (the VAE graph patchifies)
        native = (manifest.native_height // factor) * (manifest.native_width // factor)
        return 0, 0, MAX_REFERENCES * native

    # FLUX.1's answers read its flux section, which a FLUX.2 manifest does not have: klein has no
    # guidance input (its guidance is real CFG), no Fill channels, and its reference images are
    # step hooks, not a mode of the loop as Kontext's.
    def distilled_guidance(self, manifest: Manifest) -> bool:
        return False

    def takes_strength(self, manifest: Manifest) -> bool:
        return True

    def own_mode(self, manifest: Manifest, resolved: ResolvedRequest):
        return None

    def make_denoiser(self, engine: Engine):
        from sdrt.runtime.families.flux2_latents import TokenDenoiser

        return TokenDenoiser(engine, self.denoiser)

    def set_timesteps(self, sampler, steps: int, manifest: Manifest, resolved: ResolvedRequest | None) -> None:
        """The pipeline's sigmas, shifted by the empirical mu of the image's tokens when the
        scheduler shifts dynamically."""
        from sdrt.runtime.families.flux2_latents import empirical_mu

        mu = None
        if sampler.config.use_dynamic_shifting:
            if resolved is None:
                raise GenerationError("FLUX.2's sampler needs the image size (its shift depends on it)")
            patch = manifest.vae_scale_factor
            mu = empirical_mu((resolved.height // patch) * (resolved.width // patch), steps)
        sampler.set_timesteps(steps, mu=mu, sigmas=flux_sigmas(steps))

    def check_request(self, request: GenerationRequest, manifest: Manifest) -> None:
        super().check_request(request, manifest)
        if request.reference_images is not None:
            from sdrt.runtime.features.references import open_references

            open_references(request.reference_images)  # refused here, before any model runs

    def default_size(
        self, request: GenerationRequest, manifest: Manifest, height: int | None, width: int | None
    ) -> tuple[int | None, int | None]:
        """The first reference image's prepared size where the request gives none (the
        pipeline's `height = height or image_height`)."""
        if request.reference_images is None:
            return height, width
        from sdrt.runtime.features.references import open_references, prepared_size

        first = prepared_size(open_references(request.reference_images)[0], manifest.vae_scale_factor)
        return (first[0] if height is None else height), (first[1] if width is None else width)

    def check_manifest(self, manifest: Manifest) -> str | None:
        if manifest.flux2 is None:
            return f"family {manifest.family!r} needs the flux2 section"
        return None


def _flux2(manifest: Manifest):
    if manifest.flux2 is None:
        raise ModelFolderError(f"family {manifest.family!r} needs the manifest's flux2 section; re-export the model")
    return manifest.flux2
