"""Chroma's engines, as diffusers' `ChromaPipeline` runs them (FLUX's where they are the same,
sdrt.export.flux):

- `text_encoder`: T5's last hidden states over the padded prompt, run with the tokenizer's
  attention mask (unlike FLUX's T5, Chroma's reads it);
- `transformer`: ChromaTransformer2DModel on 2x2-packed latents, the T5 states, the timestep
  (divided by 1000 in the graph, as the pipeline does), the RoPE ids and `text_mask`, the T5
  tokens it attends to; the graph appends ones for the image tokens
  (ChromaPipeline._prepare_attention_mask) and the blocks add the mask's outer product to the
  attention scores, as diffusers does;
- the 16-channel VAE (sdrt.export.components.vae_exports).
"""

from __future__ import annotations

import torch

from sdrt.export.components import (
    BATCH,
    TIMESTEP_BATCH,
    UNET_BATCH,
    ComponentExport,
    ModelGeometry,
    TensorSpec,
    vae_exports,
)
from sdrt.export.flux import POSITION_AXES, TIMESTEP_SCALE, VALIDATION_TEXT, image_ids
from sdrt.export.flux_tracing import traceable
from sdrt.runtime.families.chroma import T5_MASK, TEXT_MASK
from sdrt.runtime.manifest import (
    DENOISER_OUTPUT,
    DENOISER_TIMESTEP,
    HIDDEN_STATES,
    IMAGE_TOKENS,
    IMG_IDS,
    LAST_HIDDEN,
    T5_SEQUENCE,
    TRANSFORMER,
    TXT_IDS,
    UNET_CONTEXT,
    FluxSpec,
)

CHROMA_CLASSES = ("ChromaPipeline", "ChromaImg2ImgPipeline")
CHROMA_FAMILY = "chroma"
T5_ENCODER, TOKENIZER = "text_encoder", "tokenizer"
#: ChromaPipeline's default max_sequence_length.
CHROMA_SEQUENCE = 512
PATCH = 2


def is_chroma(pipeline) -> bool:
    return type(pipeline).__name__ in CHROMA_CLASSES


class T5MaskedHidden(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids.to(torch.int64), attention_mask=attention_mask.to(torch.int64))[0]


class TracedChromaTimeEmbed(torch.nn.Module):
    """ChromaCombinedTimestepTextProjEmbeddings without sizes of the example baked in: diffusers
    builds the zero guidance from a Python list of the batch's length; here it is zeros_like."""

    def __init__(self, embed):
        super().__init__()
        self.time_proj, self.guidance_proj = embed.time_proj, embed.guidance_proj
        self.register_buffer("mod_proj", embed.mod_proj, persistent=False)

    def forward(self, timestep):
        zeros = torch.zeros_like(timestep)
        times = self.time_proj(timestep).to(timestep.dtype)
        guidance = self.guidance_proj(zeros).to(timestep.dtype)
        rows = self.mod_proj.shape[0]
        both = torch.cat([times, guidance], dim=1)[:, None, :] + torch.zeros(rows, 1, dtype=timestep.dtype)
        mod = self.mod_proj.to(timestep.dtype)[None] + zeros[:, None, None]
        return torch.cat([both, mod], dim=-1)


def chroma_traceable(model):
    model = traceable(model)
    model.time_text_embed = TracedChromaTimeEmbed(model.time_text_embed)
    return model


class ChromaTransformer(torch.nn.Module):
    """The transformer with the pipeline's timestep / 1000 and the image tokens' ones in the mask."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, hidden_states, timestep, encoder_hidden_states, text_mask, img_ids, txt_ids):
        image = torch.ones_like(hidden_states[:, :, 0])
        return self.model(
            hidden_states=hidden_states,
            timestep=timestep / TIMESTEP_SCALE,
            encoder_hidden_states=encoder_hidden_states,
            txt_ids=txt_ids,
            img_ids=img_ids,
            attention_mask=torch.cat([text_mask, image], dim=1),
            return_dict=False,
        )[0]


def chroma_geometry(pipeline, max_sequence_length: int) -> ModelGeometry:
    """Sizes of the export; the text length is T5's padded length."""
    from sdrt.export.flux import VALIDATION_LATENTS

    transformer, vae = pipeline.transformer.config, pipeline.vae.config
    return ModelGeometry(
        latent_channels=vae.latent_channels,
        unet_in_channels=transformer.in_channels,
        text_length=max_sequence_length,
        text_hidden_size=transformer.joint_attention_dim,
        vae_scale_factor=2 ** (len(vae.block_out_channels) - 1),
        unet_size_multiple=PATCH,
        native_latent_size=VALIDATION_LATENTS,
    )


def _text_mask(gen, batch: int, length: int) -> torch.Tensor:
    """Validation masks: a random count of visible tokens per row, at least one."""
    counts = torch.randint(1, length + 1, (batch, 1), generator=gen)
    return (torch.arange(length)[None, :] < counts).float()


def chroma_component_exports(pipeline, geometry: ModelGeometry) -> list[ComponentExport]:
    f32 = "float32"
    t5, config = pipeline.text_encoder.config, pipeline.transformer.config
    packed, text_width = config.in_channels, config.joint_attention_dim

    def t5_inputs(gen, batch, latent_h, latent_w):
        length = VALIDATION_TEXT[min(batch, len(VALIDATION_TEXT)) - 1]
        ids = torch.randint(0, t5.vocab_size, (batch, length), generator=gen, dtype=torch.int32)
        return ids, _text_mask(gen, batch, length).to(torch.int32)

    def transformer_inputs(gen, batch, latent_h, latent_w):
        length = VALIDATION_TEXT[min(batch, len(VALIDATION_TEXT)) - 1]
        tokens = (latent_h // PATCH) * (latent_w // PATCH)
        return (
            torch.randn(batch, tokens, packed, generator=gen),
            torch.rand(batch, generator=gen) * TIMESTEP_SCALE,
            torch.randn(batch, length, text_width, generator=gen),
            _text_mask(gen, batch, length),
            image_ids(latent_h, latent_w),
            torch.zeros(length, POSITION_AXES),
        )

    return [
        ComponentExport(
            T5_ENCODER,
            T5MaskedHidden(pipeline.text_encoder),
            [
                TensorSpec("input_ids", "int32", [BATCH, T5_SEQUENCE]),
                TensorSpec(T5_MASK, "int32", [BATCH, T5_SEQUENCE]),
            ],
            [TensorSpec(LAST_HIDDEN, f32, [BATCH, T5_SEQUENCE, t5.d_model])],
            t5_inputs,
        ),
        ComponentExport(
            TRANSFORMER,
            ChromaTransformer(chroma_traceable(pipeline.transformer)),
            [
                TensorSpec(HIDDEN_STATES, f32, [UNET_BATCH, IMAGE_TOKENS, packed]),
                TensorSpec(DENOISER_TIMESTEP, f32, [TIMESTEP_BATCH]),
                TensorSpec(UNET_CONTEXT, f32, [UNET_BATCH, T5_SEQUENCE, text_width]),
                TensorSpec(TEXT_MASK, f32, [UNET_BATCH, T5_SEQUENCE]),
                TensorSpec(IMG_IDS, f32, [IMAGE_TOKENS, POSITION_AXES]),
                TensorSpec(TXT_IDS, f32, [T5_SEQUENCE, POSITION_AXES]),
            ],
            [TensorSpec(DENOISER_OUTPUT, f32, [UNET_BATCH, IMAGE_TOKENS, config.out_channels or packed])],
            transformer_inputs,
            lora_model=pipeline.transformer,
        ),
        *vae_exports(pipeline, geometry),
    ]


def chroma_spec(max_sequence_length: int, t5_precision: str) -> FluxSpec:
    """Chroma's T5 settings in the manifest's flux section (one encoder, one tokenizer)."""
    return FluxSpec(
        text_encoders=[T5_ENCODER],
        tokenizers=[TOKENIZER],
        max_sequence_length=max_sequence_length,
        guidance_embeds=False,
        t5_precision=t5_precision,
    )
