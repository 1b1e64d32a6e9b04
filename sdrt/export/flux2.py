"""FLUX.2 [klein]'s engines, as diffusers' `Flux2KleinPipeline` runs them:

- `transformer`: Flux2Transformer2DModel on patchified latents as tokens (`image_tokens`: the
  generated image's, then any reference images'), the Qwen3 text states, the timestep (divided
  by 1000 in the graph, as the pipeline does) and the 4-axis RoPE ids of image and text tokens;
  no guidance input (the pipeline passes none); dynamic batch, image and text lengths;
- `vae_decoder` / `vae_encoder`: AutoencoderKLFlux2 with the pipeline's latent normalisation
  inside the graph, so the loop's latents are the transformer's: the decoder takes patchified,
  batch-norm-normalised latents [batch, 4 * latent_channels, height / 16, width / 16],
  denormalises them with the VAE's running statistics (x * sqrt(var + eps) + mean), unpatchifies
  and decodes; the encoder's mean and std come out patchified and normalised the same way
  (`_encode_vae_image`: the mean is the latents of a reference image);
- the Qwen3 text encoder (sdrt.export.qwen_encoder) with the hidden states of the pipeline's
  layers.
"""

from __future__ import annotations

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
    VaeDecoder,
    VaeEncoder,
)
from sdrt.export.flux import TIMESTEP_SCALE, VALIDATION_LATENTS, VALIDATION_TEXT
from sdrt.export.flux2_tracing import traceable_flux2
from sdrt.runtime.flux2_spec import KLEIN_SEQUENCE, POSITION_AXES
from sdrt.runtime.manifest import (
    DENOISER_OUTPUT,
    DENOISER_TIMESTEP,
    HIDDEN_STATES,
    IMAGE_TOKENS,
    IMG_IDS,
    TRANSFORMER,
    TXT_IDS,
    UNET_CONTEXT,
    DimRange,
)

FLUX2_CLASSES = ("Flux2KleinPipeline",)
FLUX2_FAMILY = "flux2"
TEXT_ENCODER, TOKENIZER = "text_encoder", "tokenizer"
#: Flux2KleinPipeline's default max_sequence_length and text_encoder_out_layers.
KLEIN_SEQUENCE_LENGTH = 512
KLEIN_LAYERS = (9, 18, 27)
#: The VAE's latents are patchified 2x2 into channels (AutoencoderKLFlux2's patch_size).
PATCH = 2
#: Flux2KleinPipeline.default_sample_size: 128 VAE latents (1024 pixels) a side, 64 patchified.
NATIVE_PATCHED_SIDE = 64
MAX_SIDE_FACTOR = 2
MAX_BATCH = 8
#: The reference images an export's token range leaves room for (a TensorRT profile's bound;
#: diffusers has no limit). Each is at most the native area (the pipeline resizes larger ones).
MAX_REFERENCE_IMAGES = 4
#: Reference image i has time coordinate REFERENCE_TIME * (i + 1) (Flux2KleinPipeline._prepare_image_ids).
REFERENCE_TIME = 10
TIME_AXIS, ROW_AXIS, COLUMN_AXIS, TEXT_AXIS = range(POSITION_AXES)


def is_flux2(pipeline) -> bool:
    return type(pipeline).__name__ in FLUX2_CLASSES


def patchify(latents: torch.Tensor) -> torch.Tensor:
    """[b, c, h, w] -> [b, 4c, h/2, w/2], each patch's channels in (channel, row, column) order."""
    b, c, h, w = latents.shape
    patches = latents.reshape(b, c, h // PATCH, PATCH, w // PATCH, PATCH).permute(0, 1, 3, 5, 2, 4)
    return patches.reshape(b, c * PATCH * PATCH, h // PATCH, w // PATCH)


def unpatchify(latents: torch.Tensor) -> torch.Tensor:
    b, c, h, w = latents.shape
    patches = latents.reshape(b, c // (PATCH * PATCH), PATCH, PATCH, h, w).permute(0, 1, 4, 2, 5, 3)
    return patches.reshape(b, c // (PATCH * PATCH), h * PATCH, w * PATCH)


def _bn_stats(vae) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch norm's mean and std as [1, channels, 1, 1] (the pipeline's latents_bn_mean/std)."""
    mean = vae.bn.running_mean.view(1, -1, 1, 1)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)
    return mean, std


class Flux2VaeDecoder(VaeDecoder):
    def forward(self, latent_sample):
        mean, std = _bn_stats(self.vae)
        return super().forward(unpatchify(latent_sample * std + mean))


class Flux2VaeEncoder(VaeEncoder):
    def forward(self, sample):
        latent_mean, latent_std = super().forward(sample)
        mean, std = _bn_stats(self.vae)
        return (patchify(latent_mean) - mean) / std, patchify(latent_std) / std


class Flux2Transformer(torch.nn.Module):
    """The transformer with the pipeline's timestep / 1000 inside the graph and no guidance."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, hidden_states, timestep, encoder_hidden_states, img_ids, txt_ids):
        return self.model(
            hidden_states=hidden_states,
            timestep=timestep / TIMESTEP_SCALE,
            guidance=None,
            encoder_hidden_states=encoder_hidden_states,
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]


def image_ids(rows: int, columns: int, time: int = 0) -> torch.Tensor:
    """(time, row, column, 0) per patchified latent (_prepare_latent_ids, _prepare_image_ids)."""
    ids = torch.zeros(rows, columns, POSITION_AXES)
    ids[..., TIME_AXIS] = time
    ids[..., ROW_AXIS] = torch.arange(rows)[:, None]
    ids[..., COLUMN_AXIS] = torch.arange(columns)[None, :]
    return ids.reshape(-1, POSITION_AXES)


def text_ids(length: int) -> torch.Tensor:
    """(0, 0, 0, position) per text token (_prepare_text_ids)."""
    ids = torch.zeros(length, POSITION_AXES)
    ids[:, TEXT_AXIS] = torch.arange(length)
    return ids


def flux2_geometry(pipeline, max_sequence_length: int) -> ModelGeometry:
    """Sizes of the export in the loop's latents: patchified (4x the VAE's channels, 16x smaller)."""
    transformer, vae = pipeline.transformer.config, pipeline.vae.config
    return ModelGeometry(
        latent_channels=vae.latent_channels * PATCH * PATCH,
        unet_in_channels=transformer.in_channels,
        text_length=max_sequence_length,
        text_hidden_size=transformer.joint_attention_dim,
        vae_scale_factor=2 ** (len(vae.block_out_channels) - 1) * PATCH,
        unet_size_multiple=1,
        native_latent_size=VALIDATION_LATENTS,
    )


def flux2_dims(geometry: ModelGeometry, max_sequence_length: int) -> dict[str, DimRange]:
    native, scale = NATIVE_PATCHED_SIDE, geometry.vae_scale_factor
    latent = DimRange(1, native, native * MAX_SIDE_FACTOR, 1)
    image = DimRange(scale, native * scale, latent.max * scale, scale)
    tokens = latent.max**2 * (1 + MAX_REFERENCE_IMAGES)
    return {
        BATCH: DimRange(1, 1, MAX_BATCH),
        UNET_BATCH: DimRange(1, 1, 2 * MAX_BATCH),
        TIMESTEP_BATCH: DimRange(1, 1, 2 * MAX_BATCH),
        HEIGHT: image,
        WIDTH: image,
        LATENT_HEIGHT: latent,
        LATENT_WIDTH: latent,
        IMAGE_TOKENS: DimRange(1, native**2, tokens),
        KLEIN_SEQUENCE: DimRange(1, max_sequence_length, max_sequence_length),
    }


def flux2_vae_exports(pipeline, geometry: ModelGeometry) -> list[ComponentExport]:
    g, f32 = geometry, "float32"

    def decoder_inputs(gen, batch, latent_h, latent_w):
        return (torch.randn(batch, g.latent_channels, latent_h, latent_w, generator=gen),)

    def encoder_inputs(gen, batch, latent_h, latent_w):
        shape = (batch, 3, latent_h * g.vae_scale_factor, latent_w * g.vae_scale_factor)
        return (torch.rand(shape, generator=gen) * 2 - 1,)

    latent = [g.latent_channels, LATENT_HEIGHT, LATENT_WIDTH]
    return [
        ComponentExport(
            "vae_decoder",
            Flux2VaeDecoder(pipeline.vae),
            [TensorSpec("latent_sample", f32, [BATCH, *latent])],
            [TensorSpec("sample", f32, [BATCH, 3, HEIGHT, WIDTH])],
            decoder_inputs,
        ),
        ComponentExport(
            "vae_encoder",
            Flux2VaeEncoder(pipeline.vae),
            [TensorSpec("sample", f32, [BATCH, 3, HEIGHT, WIDTH])],
            [TensorSpec("latent_mean", f32, [BATCH, *latent]), TensorSpec("latent_std", f32, [BATCH, *latent])],
            encoder_inputs,
        ),
    ]


def flux2_transformer_export(pipeline) -> ComponentExport:
    f32, config = "float32", pipeline.transformer.config
    channels, text_width = config.in_channels, config.joint_attention_dim

    def transformer_inputs(gen, batch, latent_h, latent_w):
        length = VALIDATION_TEXT[min(batch, len(VALIDATION_TEXT)) - 1]
        ids = image_ids(latent_h, latent_w)
        if batch > 1:  # the second case also has a reference image's tokens
            ids = torch.cat([ids, image_ids(latent_w, latent_h, REFERENCE_TIME)])
        return (
            torch.randn(batch, ids.shape[0], channels, generator=gen),
            torch.rand(batch, generator=gen) * TIMESTEP_SCALE,
            torch.randn(batch, length, text_width, generator=gen),
            ids,
            text_ids(length),
        )

    return ComponentExport(
        TRANSFORMER,
        Flux2Transformer(traceable_flux2(pipeline.transformer)),
        [
            TensorSpec(HIDDEN_STATES, f32, [UNET_BATCH, IMAGE_TOKENS, channels]),
            TensorSpec(DENOISER_TIMESTEP, f32, [TIMESTEP_BATCH]),
            TensorSpec(UNET_CONTEXT, f32, [UNET_BATCH, KLEIN_SEQUENCE, text_width]),
            TensorSpec(IMG_IDS, f32, [IMAGE_TOKENS, POSITION_AXES]),
            TensorSpec(TXT_IDS, f32, [KLEIN_SEQUENCE, POSITION_AXES]),
        ],
        [TensorSpec(DENOISER_OUTPUT, f32, [UNET_BATCH, IMAGE_TOKENS, config.out_channels or channels])],
        transformer_inputs,
        lora_model=pipeline.transformer,  # the wrapper keeps diffusers' module paths under it
    )
