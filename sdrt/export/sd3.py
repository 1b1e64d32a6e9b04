"""Stable Diffusion 3 / 3.5's engines, as diffusers' `StableDiffusion3Pipeline` runs them:

- `text_encoder`, `text_encoder_2`: CLIP-L and CLIP-G with projection, each giving its
  penultimate hidden states and its projected pooled output (`_get_clip_prompt_embeds`, no
  clip skip);
- `text_encoder_3`: T5's last hidden states over the padded prompt (sdrt.export.flux's T5Hidden),
  left out by `--no-t5` or when the pipeline has none: the runtime then feeds zeros in its place,
  as diffusers does when text_encoder_3 is None;
- `transformer`: SD3Transformer2DModel on [batch, channels, height, width] latents (it patches
  them itself), the joined text states, the pooled embeddings, the timestep as the pipeline
  passes it (sigma * 1000) and a per-layer skip mask (`skip_layers`, float32, 1 skips a layer:
  diffusers' `skip_layers` argument) so skip-layer guidance needs no second copy of the weights;
- the 16-channel VAE (sdrt.export.components.vae_exports), its scaling and shift factors in
  the manifest.
"""

from __future__ import annotations

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
from sdrt.export.flux import T5Hidden
from sdrt.runtime.manifest import (
    DENOISER_OUTPUT,
    DENOISER_TIMESTEP,
    HIDDEN_STATES,
    LAST_HIDDEN,
    PENULTIMATE_HIDDEN,
    POOLED_PROJECTIONS,
    PROJECTED,
    T5_SEQUENCE,
    TRANSFORMER,
    UNET_CONTEXT,
    DimRange,
)
from sdrt.runtime.sd3_spec import CLIP_LAYER_STATES, SD3_SEQUENCE, SKIP_LAYERS, Sd3Spec

SD3_CLASSES = ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline")
CLIP_ENCODERS, T5_ENCODER = ("text_encoder", "text_encoder_2"), "text_encoder_3"
CLIP_TOKENIZERS, T5_TOKENIZER = ("tokenizer", "tokenizer_2"), "tokenizer_3"
#: StableDiffusion3Pipeline's default max_sequence_length.
DEFAULT_SEQUENCE = 256
#: hidden_states[-2]: the penultimate layer's states.
PENULTIMATE = -2
MAX_SIDE_FACTOR = 2
MAX_BATCH = 8
#: Validation latent side and T5 lengths: small, the transformer's cost is quadratic.
VALIDATION_LATENTS = 8
VALIDATION_TEXT = (8, 12)
#: The skip mask's value for a skipped layer.
SKIPPED = 1.0


def is_sd3(pipeline) -> bool:
    return type(pipeline).__name__ in SD3_CLASSES


class ClipPenultimate(torch.nn.Module):
    """int32 ids -> the penultimate layer's hidden states, the projected pooled output and every
    hidden state stacked (CLIP_LAYER_STATES, for clip skip)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        out = self.model(input_ids.to(torch.int64), output_hidden_states=True, return_dict=True)
        return out.hidden_states[PENULTIMATE], out.text_embeds, torch.stack(out.hidden_states, dim=1)


class SkippableBlock(torch.nn.Module):
    """A transformer block whose outputs are its inputs where the mask says skip (diffusers
    does not run a skipped block: both streams pass through unchanged)."""

    def __init__(self, block, index: int, owner: Sd3Transformer):
        super().__init__()
        self.block = block
        self.index = index
        self.owner = [owner]  # a list: not a submodule (no cycle in the module tree)
        self.context_pre_only = block.context_pre_only

    def forward(self, hidden_states, encoder_hidden_states, temb, **kwargs):
        text, image = self.block(hidden_states, encoder_hidden_states, temb, **kwargs)
        skip = self.owner[0].mask[self.index] >= SKIPPED
        image = torch.where(skip, hidden_states, image)
        text = encoder_hidden_states if text is None else torch.where(skip, encoder_hidden_states, text)
        return text, image


class Sd3Transformer(torch.nn.Module):
    """The transformer with its blocks skippable by the `skip_layers` mask input."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.mask = None
        blocks = model.transformer_blocks
        for index in range(len(blocks)):
            blocks[index] = SkippableBlock(blocks[index], index, self)

    def forward(self, hidden_states, timestep, encoder_hidden_states, pooled_projections, skip_layers):
        self.mask = skip_layers
        return self.model(
            hidden_states=hidden_states,
            timestep=timestep,
            encoder_hidden_states=encoder_hidden_states,
            pooled_projections=pooled_projections,
            return_dict=False,
        )[0]


def unwrapped_blocks(transformer) -> torch.nn.Module:
    """The transformer's layers under diffusers' module paths, as LoRA files name them (its
    blocks taken out of their SkippableBlock); the same modules, no weight copied."""
    view = torch.nn.Module()
    for name, child in transformer.named_children():
        if name == "transformer_blocks":
            child = torch.nn.ModuleList([getattr(block, "block", block) for block in child])
        view.add_module(name, child)
    return view


def sd3_geometry(pipeline) -> ModelGeometry:
    transformer, vae = pipeline.transformer.config, pipeline.vae.config
    return ModelGeometry(
        latent_channels=vae.latent_channels,
        unet_in_channels=transformer.in_channels,
        text_length=pipeline.tokenizer.model_max_length,
        text_hidden_size=transformer.joint_attention_dim,
        vae_scale_factor=2 ** (len(vae.block_out_channels) - 1),
        unet_size_multiple=transformer.patch_size,
        native_latent_size=VALIDATION_LATENTS,
    )


def native_latent_side(pipeline) -> int:
    """StableDiffusion3Pipeline.default_sample_size: the transformer's sample_size."""
    return int(pipeline.transformer.config.sample_size)


def sd3_dims(pipeline, geometry: ModelGeometry, max_sequence_length: int) -> dict[str, DimRange]:
    """Latent sides on the patch grid, up to the position table's side (pos_embed_max_size)."""
    config = pipeline.transformer.config
    patch, scale = config.patch_size, geometry.vae_scale_factor
    native = native_latent_side(pipeline)
    largest = min(native * MAX_SIDE_FACTOR, (config.pos_embed_max_size or native) * patch)
    latent = DimRange(patch, min(native, largest), largest, patch)
    image = DimRange(latent.min * scale, latent.opt * scale, latent.max * scale, patch * scale)
    text = geometry.text_length + max_sequence_length
    return {
        BATCH: DimRange(1, 1, MAX_BATCH),
        UNET_BATCH: DimRange(1, 1, 2 * MAX_BATCH),
        TIMESTEP_BATCH: DimRange(1, 1, 2 * MAX_BATCH),
        HEIGHT: image,
        WIDTH: image,
        LATENT_HEIGHT: latent,
        LATENT_WIDTH: latent,
        T5_SEQUENCE: DimRange(1, max_sequence_length, max_sequence_length),
        SD3_SEQUENCE: DimRange(1, text, text),
    }


def sd3_component_exports(pipeline, geometry: ModelGeometry, with_t5: bool) -> list[ComponentExport]:
    f32 = "float32"
    config = pipeline.transformer.config
    channels, text_width, pooled_width = config.in_channels, config.joint_attention_dim, config.pooled_projection_dim
    layers = len(pipeline.transformer.transformer_blocks)
    exports = []
    for name in CLIP_ENCODERS:
        clip = getattr(pipeline, name).config

        def clip_inputs(gen, batch, latent_h, latent_w, vocab=clip.vocab_size):
            return (torch.randint(0, vocab, (batch, geometry.text_length), generator=gen, dtype=torch.int32),)

        exports.append(
            ComponentExport(
                name,
                ClipPenultimate(getattr(pipeline, name)),
                [TensorSpec("input_ids", "int32", [BATCH, geometry.text_length])],
                [
                    TensorSpec(PENULTIMATE_HIDDEN, f32, [BATCH, geometry.text_length, clip.hidden_size]),
                    TensorSpec(PROJECTED, f32, [BATCH, clip.projection_dim]),
                    TensorSpec(
                        CLIP_LAYER_STATES,
                        f32,
                        [BATCH, clip.num_hidden_layers + 1, geometry.text_length, clip.hidden_size],
                    ),
                ],
                clip_inputs,
                lora_model=getattr(pipeline, name),
            )
        )
    if with_t5:
        t5 = pipeline.text_encoder_3.config

        def t5_inputs(gen, batch, latent_h, latent_w):
            length = VALIDATION_TEXT[min(batch, len(VALIDATION_TEXT)) - 1]
            return (torch.randint(0, t5.vocab_size, (batch, length), generator=gen, dtype=torch.int32),)

        exports.append(
            ComponentExport(
                T5_ENCODER,
                T5Hidden(pipeline.text_encoder_3),
                [TensorSpec("input_ids", "int32", [BATCH, T5_SEQUENCE])],
                [TensorSpec(LAST_HIDDEN, f32, [BATCH, T5_SEQUENCE, t5.d_model])],
                t5_inputs,
            )
        )

    def transformer_inputs(gen, batch, latent_h, latent_w):
        length = geometry.text_length + VALIDATION_TEXT[min(batch, len(VALIDATION_TEXT)) - 1]
        mask = torch.zeros(layers)
        mask[batch % layers] = SKIPPED  # the two validation cases skip different layers
        return (
            torch.randn(batch, channels, latent_h, latent_w, generator=gen),
            torch.rand(batch, generator=gen) * pipeline.scheduler.config.num_train_timesteps,
            torch.randn(batch, length, text_width, generator=gen),
            torch.randn(batch, pooled_width, generator=gen),
            mask,
        )

    latent = [UNET_BATCH, channels, LATENT_HEIGHT, LATENT_WIDTH]
    exports.append(
        ComponentExport(
            TRANSFORMER,
            Sd3Transformer(pipeline.transformer),
            [
                TensorSpec(HIDDEN_STATES, f32, latent),
                TensorSpec(DENOISER_TIMESTEP, f32, [TIMESTEP_BATCH]),
                TensorSpec(UNET_CONTEXT, f32, [UNET_BATCH, SD3_SEQUENCE, text_width]),
                TensorSpec(POOLED_PROJECTIONS, f32, [UNET_BATCH, pooled_width]),
                TensorSpec(SKIP_LAYERS, f32, [layers]),
            ],
            [
                TensorSpec(
                    DENOISER_OUTPUT, f32, [UNET_BATCH, config.out_channels or channels, LATENT_HEIGHT, LATENT_WIDTH]
                )
            ],
            transformer_inputs,
            lora_model=unwrapped_blocks(pipeline.transformer),
            cpu_fusions=True,
        )
    )
    return exports + vae_exports(pipeline, geometry)


def sd3_spec(pipeline, with_t5: bool, max_sequence_length: int, t5_precision: str) -> Sd3Spec:
    return Sd3Spec(
        clip_encoders=list(CLIP_ENCODERS),
        clip_tokenizers=list(CLIP_TOKENIZERS),
        t5_encoder=T5_ENCODER if with_t5 else None,
        t5_tokenizer=T5_TOKENIZER if with_t5 else None,
        max_sequence_length=max_sequence_length,
        joint_attention_dim=int(pipeline.transformer.config.joint_attention_dim),
        transformer_layers=len(pipeline.transformer.transformer_blocks),
        t5_precision=t5_precision,
    )


def write_sd3_files(pipeline, folder: Path, components: list[str], with_t5: bool) -> None:
    """The tokenizers' folders, scheduler/ and model_index.json."""
    import json

    import diffusers

    tokenizers = [*CLIP_TOKENIZERS, *([T5_TOKENIZER] if with_t5 else [])]
    for name in tokenizers:
        getattr(pipeline, name).save_pretrained(folder / name)
    pipeline.scheduler.save_config(folder / "scheduler")
    index = {
        "_class_name": "StableDiffusion3Pipeline",
        "_diffusers_version": diffusers.__version__,
        **{name: ["diffusers", "OnnxRuntimeModel"] for name in components},
        **{name: ["transformers", type(getattr(pipeline, name)).__name__] for name in tokenizers},
        "scheduler": ["diffusers", type(pipeline.scheduler).__name__],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
