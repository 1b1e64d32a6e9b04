"""Z-Image (Turbo), as diffusers' `ZImagePipeline`, `ZImageImg2ImgPipeline` and `ZImageInpaintPipeline` run it:

- text: a Qwen3 model's hidden_states[-2] at the real tokens of the chat-wrapped prompt
  (sdrt.runtime.text.zimage_encoders); no pooled vector, no guidance embedding;
- the transformer (ZImageTransformer2DModel, single-stream with image and caption refiners)
  sees 2x2 patches padded to 32 slots with RoPE positions (sdrt.runtime.families.zimage_tokens);
  the loop's latents stay [batch, 16, h, w], as FLUX's, and the graph returns the negated
  prediction the pipeline feeds its scheduler;
- guidance: classifier-free when guidance_scale > 0 (the pipeline's do_classifier_free_guidance),
  negative prompt "" when none is given, combined as c + scale * (c - u), i.e. u + (scale + 1)
  (c - u). Z-Image Turbo is distilled for guidance_scale 0 (one batch) and about 8 steps. The
  pipeline's cfg_truncation and cfg_normalization are request settings of this family
  (sdrt.runtime.families.zimage_guidance);
- sampling: FLUX's (flow_euler, sigmas linspace(1, 1 / steps, steps), shifted by the scheduler
  config: Turbo's fixed shift 3, or mu from the image's token count with dynamic shifting);
- image-to-image and inpainting as FLUX's (ZImageImg2ImgPipeline / ZImageInpaintPipeline follow
  FluxImg2ImgPipeline / FluxInpaintPipeline: the skipped steps rounded down, the kept region
  re-noised after each step); the VAE is FLUX's (latents / scaling_factor + shift_factor).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from sdrt.errors import GenerationError
from sdrt.runtime.families.base import RowFeeds
from sdrt.runtime.families.flux import Flux
from sdrt.runtime.manifest import TRANSFORMER, UNET_CONTEXT, Manifest

if TYPE_CHECKING:
    from sdrt.runtime.engines import Engine
    from sdrt.runtime.request import GenerationRequest
    from sdrt.runtime.request_resolve import ResolvedRequest
    from sdrt.runtime.text.encoders import TextEncoding

ZIMAGE_FEATURES = frozenset({"img2img", "init_latents", "inpainting", "lora"})
#: ZImagePipeline's guidance c + s (c - u) is sdrt's u + (s + 1)(c - u): the scale is offset by one.
GUIDANCE_OFFSET = 1.0


class ZImage(Flux):
    name = "zimage"
    display_name = "Z-Image"
    own_settings: ClassVar[tuple[str, ...]] = ("cfg_truncation", "cfg_normalization")
    features = ZIMAGE_FEATURES
    #: ZImagePipeline's default guidance_scale (Turbo is run with 0).
    default_guidance = 5.0
    text_encoder_roles = ("qwen",)
    text_label = "Qwen3"
    #: ZImagePipeline.load_lora_weights (ZImageLoraLoaderMixin) changes the transformer only.
    lora_components = (TRANSFORMER,)

    def prompt_tokens(self, manifest: Manifest) -> int:
        """The chat-wrapped prompt's tokens (the template's markers count, as in diffusers)."""
        spec = manifest.flux
        return 0 if spec is None else spec.max_sequence_length

    def load_text_encoders(self, folder, manifest: Manifest, embeddings):
        from sdrt.runtime.text.zimage_encoders import ZImageTextEncoders

        return ZImageTextEncoders.load(folder, manifest, embeddings)

    def text_feeds(self, encoding: TextEncoding) -> dict[str, np.ndarray]:
        return {UNET_CONTEXT: encoding.hidden}

    def row_feeds(self, manifest: Manifest, resolved: ResolvedRequest) -> RowFeeds:
        return {"negative": {}, "positive": {}}

    def cfg_scale(self, request: GenerationRequest) -> float:
        """Guided when guidance_scale > 0 (the sdrt scale is then > 1)."""
        return float(request.guidance_scale) + GUIDANCE_OFFSET

    def guider(self, engine: Engine, resolved: ResolvedRequest, warnings: list[str]):
        from sdrt.runtime.families.zimage_guidance import ZImageGuidance
        from sdrt.runtime.loop.guiders import NoGuidance

        request = resolved.request
        if not resolved.guided:
            ignored = ["a negative prompt"] if request.negative_prompt is not None else []
            ignored += [name for name in self.own_settings if getattr(request, name) is not None]
            for name in ignored:
                warnings.append(f"Z-Image reads {name} only with guidance scale > 0, as diffusers: it was not used")
            return NoGuidance()
        return ZImageGuidance(self.cfg_scale(request), request.cfg_truncation, request.cfg_normalization)

    def check_request(self, request: GenerationRequest, manifest: Manifest) -> None:
        super().check_request(request, manifest)
        for name in self.own_settings:
            value = getattr(request, name)
            if value is not None and (
                not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0
            ):
                raise GenerationError(f"{name.replace('_', ' ')} must be a finite number >= 0, got {value!r}", name)

    def make_denoiser(self, engine: Engine):
        from sdrt.runtime.families.zimage_tokens import ZImageDenoiser

        return ZImageDenoiser(engine, self.denoiser)
