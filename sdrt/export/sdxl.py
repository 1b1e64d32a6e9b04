"""SDXL's engines: two text encoders with penultimate hidden states (the second also gives the
pooled, projected embedding), a UNet with the `text_time` added conditions, and the VAE.

Mirrors diffusers' `StableDiffusionXLPipeline.encode_prompt`: each encoder's hidden states of
layer -2 (before the final layer norm) are concatenated along the feature axis, and the pooled
embedding comes from the last encoder (`CLIPTextModelWithProjection.text_embeds`). The UNet gets
that embedding as `text_embeds` and the size conditioning as `time_ids`.
"""

from __future__ import annotations

import torch

from sdrt.errors import ModelFolderError
from sdrt.export.components import (
    BATCH,
    LATENT_HEIGHT,
    LATENT_WIDTH,
    TEXT_SEQUENCE,
    TIMESTEP_BATCH,
    UNET_BATCH,
    ComponentExport,
    ModelGeometry,
    TensorSpec,
    extra_tokens_spec,
    no_extra_tokens,
    text_encoder_modules,
    vae_exports,
)
from sdrt.export.residuals import added_residuals, residual_defaults, residual_inputs, residual_layout, residual_specs
from sdrt.export.token_rows import extend_tokens, text_inputs_maker
from sdrt.runtime.manifest import (
    PENULTIMATE_HIDDEN,
    POOLED,
    PROJECTED,
    TEXT_EMBEDS,
    TIME_IDS,
    UNET_CONTEXT,
    SdxlSpec,
)

#: Each text encoder's tokenizer folder (diffusers' names).
TOKENIZER_OF = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2"}
PENULTIMATE = -2
# Size conditioning values for validation inputs: pixel sizes and crop offsets up to this.
MAX_SIZE_CONDITION = 2048


class PenultimateTextEncoder(torch.nn.Module):
    """int32 ids -> hidden states of the second-to-last layer and the pooled embedding."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.projected = hasattr(model, "text_projection")
        self.tokens = extend_tokens(model)

    def forward(self, input_ids, extra_token_embeddings):
        self.tokens.extra = extra_token_embeddings
        out = self.model(input_ids.to(torch.int64), output_hidden_states=True, return_dict=True)
        pooled = out.text_embeds if self.projected else out.pooler_output
        return out.hidden_states[PENULTIMATE], pooled


class SdxlUnet(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, sample, timestep, encoder_hidden_states, text_embeds, time_ids, *residuals):
        added = {TEXT_EMBEDS: text_embeds, TIME_IDS: time_ids}
        return self.model(
            sample,
            timestep,
            encoder_hidden_states,
            added_cond_kwargs=added,
            return_dict=False,
            **added_residuals(residuals),
        )[0]


def time_ids_length(pipeline) -> int:
    """How many size/score values the UNet's added embedding takes: its input width less the
    pooled embedding's, over the width of one value's embedding."""
    unet = pipeline.unet.config
    pooled = pipeline.text_encoder_2.config.projection_dim
    count, remainder = divmod(unet.projection_class_embeddings_input_dim - pooled, unet.addition_time_embed_dim)
    if remainder or count < 1:
        raise ModelFolderError(
            "the SDXL UNet's added embedding width does not fit the text encoder's "
            "projection; the model's configs disagree"
        )
    return count


def sdxl_spec(pipeline) -> SdxlSpec:
    if getattr(pipeline, "text_encoder_2", None) is None:
        raise ModelFolderError("an SDXL model needs text_encoder_2 (OpenCLIP bigG with its projection)")
    vae = pipeline.vae.config
    if getattr(vae, "latents_mean", None) is not None or getattr(vae, "latents_std", None) is not None:
        raise ModelFolderError(
            "this VAE normalizes latents with a mean and standard deviation, which sdrt does not support yet"
        )
    encoders = list(text_encoder_modules(pipeline))
    config = pipeline.config
    return SdxlSpec(
        text_encoders=encoders,
        tokenizers=[TOKENIZER_OF[name] for name in encoders],
        force_zeros_for_empty_prompt=bool(config.get("force_zeros_for_empty_prompt", True)),
        requires_aesthetics_score=bool(config.get("requires_aesthetics_score", False)),
        vae_force_upcast=bool(getattr(vae, "force_upcast", True)),
    )


def family(pipeline) -> str:
    return "sdxl-refiner" if getattr(pipeline, "text_encoder", None) is None else "sdxl"


def sdxl_component_exports(pipeline, geometry: ModelGeometry, num_train_timesteps: int) -> list[ComponentExport]:
    g = geometry
    f32 = "float32"
    encoders = text_encoder_modules(pipeline)
    pooled_width = pipeline.text_encoder_2.config.projection_dim
    time_ids = time_ids_length(pipeline)
    exports = []
    for name, module in encoders.items():
        config = module.config
        wrapper = PenultimateTextEncoder(module)
        pooled = PROJECTED if wrapper.projected else POOLED
        pooled_size = config.projection_dim if wrapper.projected else config.hidden_size

        def text_inputs(
            gen,
            batch,
            latent_h,
            latent_w,
            make=text_inputs_maker(g.text_length, config.vocab_size),  # noqa: B008 (bound per encoder, at definition)
            width=config.hidden_size,
        ):
            return make(gen, batch, latent_h, latent_w, width)

        exports.append(
            ComponentExport(
                name,
                wrapper,
                [TensorSpec("input_ids", "int32", [BATCH, g.text_length]), extra_tokens_spec(config.hidden_size)],
                [
                    TensorSpec(PENULTIMATE_HIDDEN, f32, [BATCH, g.text_length, config.hidden_size]),
                    TensorSpec(pooled, f32, [BATCH, pooled_size]),
                ],
                text_inputs,
                no_extra_tokens(config.hidden_size),
                lora_model=module,
            )
        )

    residuals = residual_layout(pipeline.unet.config)

    def unet_inputs(gen, batch, latent_h, latent_w):
        return (
            torch.randn(2 * batch, g.unet_in_channels, latent_h, latent_w, generator=gen),
            torch.randint(0, num_train_timesteps, (2 * batch,), generator=gen).to(torch.float32),
            torch.randn(2 * batch, g.context_length(batch), g.text_hidden_size, generator=gen),
            torch.randn(2 * batch, pooled_width, generator=gen),
            torch.randint(0, MAX_SIZE_CONDITION, (2 * batch, time_ids), generator=gen).to(torch.float32),
        ) + residual_inputs(gen, residuals, 2 * batch, latent_h, latent_w)

    exports.append(
        ComponentExport(
            "unet",
            SdxlUnet(pipeline.unet),
            [
                TensorSpec("sample", f32, [UNET_BATCH, g.unet_in_channels, LATENT_HEIGHT, LATENT_WIDTH]),
                TensorSpec("timestep", f32, [TIMESTEP_BATCH]),
                TensorSpec(UNET_CONTEXT, f32, [UNET_BATCH, TEXT_SEQUENCE, g.text_hidden_size]),
                TensorSpec(TEXT_EMBEDS, f32, [UNET_BATCH, pooled_width]),
                TensorSpec(TIME_IDS, f32, [UNET_BATCH, time_ids]),
                *residual_specs(residuals),
            ],
            [TensorSpec("out_sample", f32, [UNET_BATCH, g.latent_channels, LATENT_HEIGHT, LATENT_WIDTH])],
            unet_inputs,
            residual_defaults(residuals),
            lora_model=pipeline.unet,
        )
    )
    return exports + vae_exports(pipeline, g)
