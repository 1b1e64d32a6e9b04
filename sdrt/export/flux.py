"""FLUX.1's engines (dev and schnell), as diffusers' `FluxPipeline` runs them:

- `text_encoder`: CLIP-L's pooled output only (`_get_clip_prompt_embeds`);
- `text_encoder_2`: T5's last hidden states over the padded prompt (`_get_t5_prompt_embeds`),
  any length up to `max_sequence_length`; fp32 under `--precision fp16` unless asked, since
  T5 overflows in fp16 on real weights;
- `transformer`: FluxTransformer2DModel on 2x2-packed latents (`image_tokens` of them), the T5
  states, the pooled CLIP embedding, the timestep (the graph divides it by 1000 as the pipeline
  does before the call), the RoPE position ids of image and text tokens and, for a
  guidance-distilled model (dev), the guidance value; dynamic batch, image and text lengths;
- the 16-channel VAE (sdrt.export.components.vae_exports), its scaling and shift factors in
  the manifest.

Engines are validated against their PyTorch modules as every export is (sdrt.export.validation),
on small shapes: the transformer's cost grows with the square of its tokens.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from sdrt.export.components import (
    BATCH,
    HEIGHT,
    LATENT_HEIGHT,
    LATENT_WIDTH,
    TIMESTEP_BATCH,
    UNET_BATCH,
    WIDTH,
    ComponentExport,
    ModelGeometry,
    TensorSpec,
    vae_exports,
)
from sdrt.export.flux_tracing import traceable
from sdrt.runtime.manifest import (
    DENOISER_OUTPUT,
    DENOISER_TIMESTEP,
    GUIDANCE,
    HIDDEN_STATES,
    IMAGE_TOKENS,
    IMG_IDS,
    LAST_HIDDEN,
    POOLED,
    POOLED_PROJECTIONS,
    T5_SEQUENCE,
    TRANSFORMER,
    TXT_IDS,
    UNET_CONTEXT,
    DimRange,
    FluxSpec,
)

#: FLUX.1 Fill and Kontext: their exports keep the class name (the runtime's mode reads the manifest).
FLUX_VARIANT_CLASSES = ("FluxFillPipeline", "FluxKontextPipeline")
FLUX_CLASSES = ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline", *FLUX_VARIANT_CLASSES)
#: Kontext joins a reference image's tokens to the image sequence: up to twice the tokens.
KONTEXT_CLASS, KONTEXT_SEQUENCE_FACTOR = "FluxKontextPipeline", 2
CLIP_ENCODER, T5_ENCODER = "text_encoder", "text_encoder_2"
TOKENIZERS = ("tokenizer", "tokenizer_2")
#: FluxPipeline's default max_sequence_length is 512; schnell was trained with 256 T5 tokens.
DEV_SEQUENCE, SCHNELL_SEQUENCE = 512, 256
#: diffusers' FluxPipeline.default_sample_size: 128 latents (1024 pixels) a side.
NATIVE_LATENT_SIDE = 128
#: Latent sides are even (2x2 packing), images multiples of 16; up to twice the native side.
PATCH = 2
MAX_SIDE_FACTOR = 2
MAX_BATCH = 8
#: The timestep the pipeline passes is t / 1000; the model multiplies it back.
TIMESTEP_SCALE = 1000.0
#: Validation (batch, latent height, latent width) and T5 lengths: small, the cost is quadratic.
VALIDATION_LATENTS = 8
VALIDATION_TEXT = (8, 12)
VALIDATION_GUIDANCE = (1.0, 5.0)
#: RoPE position ids have 3 axes: (0 for text and images, row, column).
POSITION_AXES = 3


def is_flux(pipeline) -> bool:
    return type(pipeline).__name__ in FLUX_CLASSES


class ClipPooled(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids.to(torch.int64), output_hidden_states=False).pooler_output


class T5Hidden(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids.to(torch.int64), output_hidden_states=False)[0]


class FluxTransformer(torch.nn.Module):
    """The transformer with the pipeline's timestep / 1000 inside the graph."""

    def __init__(self, model, guidance: bool):
        super().__init__()
        self.model = model
        self.guidance = guidance

    def forward(self, hidden_states, timestep, encoder_hidden_states, pooled_projections, img_ids, txt_ids, *guidance):
        return self.model(
            hidden_states=hidden_states,
            timestep=timestep / TIMESTEP_SCALE,
            guidance=guidance[0] if self.guidance else None,
            pooled_projections=pooled_projections,
            encoder_hidden_states=encoder_hidden_states,
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]


def image_ids(latent_h: int, latent_w: int) -> torch.Tensor:
    """FluxPipeline._prepare_latent_image_ids: (0, row, column) of each packed patch."""
    ids = torch.zeros(latent_h // PATCH, latent_w // PATCH, POSITION_AXES)
    ids[..., 1] = torch.arange(latent_h // PATCH)[:, None]
    ids[..., 2] = torch.arange(latent_w // PATCH)[None, :]
    return ids.reshape(-1, POSITION_AXES)


def flux_geometry(pipeline) -> ModelGeometry:
    """Sizes of the export; `native_latent_size` and the multiple also give the validation shapes."""
    transformer, vae = pipeline.transformer.config, pipeline.vae.config
    return ModelGeometry(
        latent_channels=vae.latent_channels,
        unet_in_channels=transformer.in_channels,
        text_length=pipeline.tokenizer.model_max_length,
        text_hidden_size=transformer.joint_attention_dim,
        vae_scale_factor=2 ** (len(vae.block_out_channels) - 1),
        unet_size_multiple=PATCH,
        native_latent_size=VALIDATION_LATENTS,
    )


def flux_dims(geometry: ModelGeometry, max_sequence_length: int, kontext: bool = False) -> dict[str, DimRange]:
    """The export's ranges; a Kontext transformer's image tokens admit the reference's as well."""
    native, scale = NATIVE_LATENT_SIDE, geometry.vae_scale_factor
    factor = KONTEXT_SEQUENCE_FACTOR if kontext else 1
    latent = DimRange(PATCH, native, native * MAX_SIDE_FACTOR, PATCH)
    image = DimRange(latent.min * scale, latent.opt * scale, latent.max * scale, PATCH * scale)
    tokens = (latent.opt // PATCH) ** 2, (latent.max // PATCH) ** 2
    return {
        BATCH: DimRange(1, 1, MAX_BATCH),
        UNET_BATCH: DimRange(1, 1, 2 * MAX_BATCH),
        TIMESTEP_BATCH: DimRange(1, 1, 2 * MAX_BATCH),
        HEIGHT: image,
        WIDTH: image,
        LATENT_HEIGHT: latent,
        LATENT_WIDTH: latent,
        IMAGE_TOKENS: DimRange(1, tokens[0], tokens[1] * factor),
        T5_SEQUENCE: DimRange(1, max_sequence_length, max_sequence_length),
    }


def flux_component_exports(pipeline, geometry: ModelGeometry, max_sequence_length: int) -> list[ComponentExport]:
    f32 = "float32"
    clip, t5 = pipeline.text_encoder.config, pipeline.text_encoder_2.config
    config = pipeline.transformer.config
    guidance = bool(config.guidance_embeds)
    packed = config.in_channels
    text_width, pooled_width = config.joint_attention_dim, config.pooled_projection_dim

    def clip_inputs(gen, batch, latent_h, latent_w):
        return (torch.randint(0, clip.vocab_size, (batch, geometry.text_length), generator=gen, dtype=torch.int32),)

    def t5_inputs(gen, batch, latent_h, latent_w):
        length = VALIDATION_TEXT[min(batch, len(VALIDATION_TEXT)) - 1]
        return (torch.randint(0, t5.vocab_size, (batch, length), generator=gen, dtype=torch.int32),)

    def transformer_inputs(gen, batch, latent_h, latent_w):
        length = VALIDATION_TEXT[min(batch, len(VALIDATION_TEXT)) - 1]
        tokens = (latent_h // PATCH) * (latent_w // PATCH)
        inputs = (
            torch.randn(batch, tokens, packed, generator=gen),
            torch.rand(batch, generator=gen) * TIMESTEP_SCALE,
            torch.randn(batch, length, text_width, generator=gen),
            torch.randn(batch, pooled_width, generator=gen),
            image_ids(latent_h, latent_w),
            torch.zeros(length, POSITION_AXES),
        )
        low, high = VALIDATION_GUIDANCE
        return inputs + ((low + (high - low) * torch.rand(batch, generator=gen),) if guidance else ())

    return [
        ComponentExport(
            CLIP_ENCODER,
            ClipPooled(pipeline.text_encoder),
            [TensorSpec("input_ids", "int32", [BATCH, geometry.text_length])],
            [TensorSpec(POOLED, f32, [BATCH, clip.hidden_size])],
            clip_inputs,
            lora_model=pipeline.text_encoder,
        ),
        ComponentExport(
            T5_ENCODER,
            T5Hidden(pipeline.text_encoder_2),
            [TensorSpec("input_ids", "int32", [BATCH, T5_SEQUENCE])],
            [TensorSpec(LAST_HIDDEN, f32, [BATCH, T5_SEQUENCE, t5.d_model])],
            t5_inputs,
        ),
        ComponentExport(
            TRANSFORMER,
            FluxTransformer(traceable(pipeline.transformer), guidance),
            [
                TensorSpec(HIDDEN_STATES, f32, [UNET_BATCH, IMAGE_TOKENS, packed]),
                TensorSpec(DENOISER_TIMESTEP, f32, [TIMESTEP_BATCH]),
                TensorSpec(UNET_CONTEXT, f32, [UNET_BATCH, T5_SEQUENCE, text_width]),
                TensorSpec(POOLED_PROJECTIONS, f32, [UNET_BATCH, pooled_width]),
                TensorSpec(IMG_IDS, f32, [IMAGE_TOKENS, POSITION_AXES]),
                TensorSpec(TXT_IDS, f32, [T5_SEQUENCE, POSITION_AXES]),
                *([TensorSpec(GUIDANCE, f32, [UNET_BATCH])] if guidance else []),
            ],
            [TensorSpec(DENOISER_OUTPUT, f32, [UNET_BATCH, IMAGE_TOKENS, config.out_channels or packed])],
            transformer_inputs,
            lora_model=pipeline.transformer,
        ),
        *vae_exports(pipeline, geometry),
    ]


def is_kontext(pipeline) -> bool:
    return type(pipeline).__name__ == KONTEXT_CLASS


def conditioning_channels(pipeline) -> int:
    """The transformer's input channels past the packed latents (FLUX.1 Fill's masked image and mask)."""
    return int(pipeline.transformer.config.in_channels) - pipeline.vae.config.latent_channels * PATCH * PATCH


def flux_spec(pipeline, max_sequence_length: int, t5_precision: str) -> FluxSpec:
    return FluxSpec(
        text_encoders=[CLIP_ENCODER, T5_ENCODER],
        tokenizers=list(TOKENIZERS),
        max_sequence_length=max_sequence_length,
        guidance_embeds=bool(pipeline.transformer.config.guidance_embeds),
        t5_precision=t5_precision,
        conditioning_channels=conditioning_channels(pipeline),
        kontext=is_kontext(pipeline),
    )


def default_sequence_length(pipeline) -> int:
    return DEV_SEQUENCE if pipeline.transformer.config.guidance_embeds else SCHNELL_SEQUENCE


def component_options(options, component: str, t5_precision: str):
    """The export options of one component: T5 keeps its own precision."""
    return replace(options, precision=t5_precision) if component == T5_ENCODER else options


def _index_class(pipeline) -> str:
    name = type(pipeline).__name__
    return name if name in FLUX_VARIANT_CLASSES else "FluxPipeline"


def write_flux_files(pipeline, folder: Path, components: list[str]) -> None:
    """tokenizer/ and tokenizer_2/ (with tokenizer.json: transformers converts spiece.model to
    it when the model had only that), scheduler/ and model_index.json."""
    import json

    import diffusers

    for name in TOKENIZERS:
        getattr(pipeline, name).save_pretrained(folder / name)
    pipeline.scheduler.save_config(folder / "scheduler")
    index = {
        "_class_name": _index_class(pipeline),
        "_diffusers_version": diffusers.__version__,
        **{name: ["diffusers", "OnnxRuntimeModel"] for name in components},
        **{name: ["transformers", type(getattr(pipeline, name)).__name__] for name in TOKENIZERS},
        "scheduler": ["diffusers", type(pipeline.scheduler).__name__],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
