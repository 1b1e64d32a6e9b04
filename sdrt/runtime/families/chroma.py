"""Chroma, as diffusers' `ChromaPipeline` runs it: FLUX-shaped (packed latents, RoPE ids, the
flow-matching sampler with FLUX's shifted sigmas and the 16-channel VAE, all from
sdrt.runtime.families.flux), with these differences:

- text: T5 only (sdrt.runtime.text.chroma_encoders), run with its tokenizer's attention mask;
  no CLIP, no pooled projection, no guidance embedding;
- the T5 tokens the transformer attends to: every real token and the first padding token
  (ChromaPipeline._get_t5_prompt_embeds), a float 0/1 row per text fed as `text_mask`; the
  graph appends ones for the image tokens (_prepare_attention_mask), as diffusers adds it to
  the attention scores;
- guidance: real classifier-free guidance with the request's guidance scale (> 1 guides), the
  negative prompt "" when none is given; n + scale * (p - n), as ChromaPipeline;
- image-to-image and inpainting as ChromaImg2ImgPipeline and ChromaInpaintPipeline, which follow
  FLUX.1's pipelines (the loop's blend, sdrt.runtime.loop.modes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from sdrt.errors import ModelFolderError
from sdrt.runtime.families.base import RowFeeds
from sdrt.runtime.families.flux import Flux
from sdrt.runtime.manifest import TRANSFORMER, UNET_CONTEXT, Manifest
from sdrt.runtime.text.encoders import TextEncoding

if TYPE_CHECKING:
    from sdrt.runtime.engines import Engine
    from sdrt.runtime.request import GenerationRequest
    from sdrt.runtime.request_resolve import ResolvedRequest

#: The transformer's input of which T5 tokens it attends to (float 0/1 per text token).
TEXT_MASK = "text_mask"
#: The T5 encoder's second input: the tokenizer's attention mask (1 for tokens, 0 for padding).
T5_MASK = "attention_mask"
#: Inpainting as ChromaInpaintPipeline: FLUX.1's blend (FluxInpaintPipeline's mask, strength and
#: noise order, which Chroma's pipeline keeps), the kept region re-noised after each step.
CHROMA_FEATURES = frozenset({"img2img", "init_latents", "inpainting", "lora", "taylorseer_cache"})


@dataclass
class MaskedEncoding(TextEncoding):
    """T5's hidden states with the transformer's text mask (float32 [max_sequence_length])."""

    mask: np.ndarray | None = None


class Chroma(Flux):
    name = "chroma"
    display_name = "Chroma"
    own_settings = ()
    features = CHROMA_FEATURES
    #: ChromaPipeline's default guidance_scale.
    default_guidance = 5.0
    text_encoder_roles = ("t5",)
    #: LoRAs change the transformer only (ChromaPipeline's FluxLoraLoaderMixin would put a
    #: file's text_encoder.* layers on its T5; sdrt reports them as unmatched).
    lora_components = (TRANSFORMER,)

    def load_text_encoders(self, folder, manifest: Manifest, embeddings):
        from sdrt.runtime.text.chroma_encoders import ChromaTextEncoders

        return ChromaTextEncoders.load(folder, manifest, embeddings)

    def text_feeds(self, encoding: TextEncoding) -> dict[str, np.ndarray]:
        mask = getattr(encoding, "mask", None)
        if mask is None:
            raise ModelFolderError("Chroma's text needs T5's attention mask; re-export the model")
        return {UNET_CONTEXT: encoding.hidden, TEXT_MASK: mask}

    def row_feeds(self, manifest: Manifest, resolved: ResolvedRequest) -> RowFeeds:
        return {"negative": {}, "positive": {}}

    def cfg_scale(self, request: GenerationRequest) -> float:
        """ChromaPipeline's do_classifier_free_guidance: guidance_scale > 1."""
        return float(request.guidance_scale)

    def guider(self, engine: Engine, resolved: ResolvedRequest, warnings: list[str]):
        from sdrt.runtime.loop.guiders import ClassifierFreeGuidance, NoGuidance

        return ClassifierFreeGuidance(self.cfg_scale(resolved.request)) if resolved.guided else NoGuidance()

    def skipped_steps(self, steps: int, strength: float) -> int:
        """ChromaImg2ImgPipeline's get_timesteps: FLUX's (the skipped steps rounded down)."""
        return super().skipped_steps(steps, strength)
