"""What each exported component is: its torch module, tensor names, dynamic axes and sample inputs.

One `ComponentExport` per engine, read by the exporter for `torch.onnx.export`, by validation
for its test inputs, and turned into the manifest's tensor specs. Names follow diffusers'
`OnnxStableDiffusionPipeline`, so exported folders run there too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from sdrt.export.residuals import added_residuals, residual_defaults, residual_inputs, residual_layout, residual_specs
from sdrt.export.token_rows import extend_tokens, text_inputs_maker
from sdrt.runtime.families import FAMILIES
from sdrt.runtime.manifest import (  # noqa: F401 - the dimension names, re-exported for the exporter
    BATCH,
    DEFAULT_PROMPT_CHUNKS,
    EXTRA_EMBEDDINGS,
    EXTRA_TOKENS,
    HEIGHT,
    LAST_HIDDEN,
    LATENT_HEIGHT,
    LATENT_WIDTH,
    LAYER_HIDDEN,
    POOLED,
    TEXT_SEQUENCE,
    TIMESTEP_BATCH,
    TIMESTEP_COND,
    UNET_BATCH,
    UNET_CONTEXT,
    WIDTH,
    DimRange,
    TensorSpec,
    downsampled,
)

# Export-time ranges recorded in the manifest (TensorRT profiles are built from them).
MAX_BATCH = 8
MAX_EXTRA_TOKENS = 1024  # textual-inversion vectors a text encoder takes at once
MIN_IMAGE_SIDE_LATENTS = 1  # in units of the UNet's size multiple
MAX_IMAGE_SIDE_FACTOR = 2  # up to twice the model's native size
ONNX_OPSET = 17


@dataclass(frozen=True)
class ModelGeometry:
    """Sizes read from the pipeline's configs that fix every tensor shape."""

    latent_channels: int
    unet_in_channels: int
    text_length: int
    text_hidden_size: int
    vae_scale_factor: int
    unet_size_multiple: int  # latent sides must be a multiple of this (the UNet's downsampling)
    native_latent_size: int
    max_prompt_chunks: int = DEFAULT_PROMPT_CHUNKS  # the UNet's text context: up to this many encoder lengths

    @classmethod
    def of(cls, pipeline, max_prompt_chunks: int = DEFAULT_PROMPT_CHUNKS) -> ModelGeometry:
        unet, vae = pipeline.unet.config, pipeline.vae.config
        text = next(encoder for encoder in text_encoder_modules(pipeline).values()).config
        downsamplers = sum(1 for block in unet.down_block_types) - 1
        return cls(
            latent_channels=vae.latent_channels,
            unet_in_channels=unet.in_channels,
            text_length=text.max_position_embeddings,
            text_hidden_size=unet.cross_attention_dim,  # SDXL concatenates two encoders' states
            vae_scale_factor=2 ** (len(vae.block_out_channels) - 1),
            unet_size_multiple=2**downsamplers,
            native_latent_size=unet.sample_size,
            max_prompt_chunks=max_prompt_chunks,
        )

    @property
    def image_multiple(self) -> int:
        return self.vae_scale_factor * self.unet_size_multiple

    def dims(self) -> dict[str, DimRange]:
        latent_max = self.native_latent_size * MAX_IMAGE_SIDE_FACTOR
        latent_max -= latent_max % self.unet_size_multiple
        latent = DimRange(
            self.unet_size_multiple * MIN_IMAGE_SIDE_LATENTS,
            self.native_latent_size,
            latent_max,
            self.unet_size_multiple,
        )
        scale = self.vae_scale_factor
        image = DimRange(latent.min * scale, latent.opt * scale, latent.max * scale, latent.multiple * scale)
        inner = {}  # the latent sides inside the UNet (ControlNet residuals)
        factor = 2
        while factor <= self.unet_size_multiple:
            side = DimRange(latent.min // factor, latent.opt // factor, latent.max // factor, latent.multiple // factor)
            inner.update({downsampled(LATENT_HEIGHT, factor): side, downsampled(LATENT_WIDTH, factor): side})
            factor *= 2
        return {
            BATCH: DimRange(1, 1, MAX_BATCH),
            UNET_BATCH: DimRange(1, 2, 2 * MAX_BATCH),
            TIMESTEP_BATCH: DimRange(1, 1, 2 * MAX_BATCH),
            HEIGHT: image,
            WIDTH: image,
            LATENT_HEIGHT: latent,
            LATENT_WIDTH: latent,
            TEXT_SEQUENCE: DimRange(
                self.text_length, self.text_length, self.text_length * self.max_prompt_chunks, self.text_length
            ),
            EXTRA_TOKENS: DimRange(1, 1, MAX_EXTRA_TOKENS),
            **inner,
        }

    def context_length(self, batch: int) -> int:
        """The text context of validation inputs: a batch of 2 also checks a two-chunk context."""
        return self.text_length * min(batch, self.max_prompt_chunks)


def text_encoder_modules(pipeline) -> dict[str, torch.nn.Module]:
    """The pipeline's text encoders by component name (an SDXL refiner has only the second)."""
    names = ("text_encoder", "text_encoder_2")
    return {name: getattr(pipeline, name) for name in names if getattr(pipeline, name, None) is not None}


def clip_family(pipeline) -> str:
    """sd1, or sd2 (OpenCLIP text encoder: linear attention projections)."""
    return "sd2" if getattr(pipeline.unet.config, "use_linear_projection", False) else "sd1"


def is_sdxl(pipeline) -> bool:
    return getattr(pipeline.unet.config, "addition_embed_type", None) == "text_time"


class TextEncoder(torch.nn.Module):
    """int32 ids (what OnnxStableDiffusionPipeline feeds) -> hidden states and pooled output;
    with `layers`, also every layer's hidden states through the final layer norm (clip skip)."""

    def __init__(self, model, layers: bool):
        super().__init__()
        self.model = model
        self.layers = layers
        self.tokens = extend_tokens(model)

    def forward(self, input_ids, extra_token_embeddings):
        self.tokens.extra = extra_token_embeddings
        out = self.model(input_ids.to(torch.int64), output_hidden_states=self.layers, return_dict=True)
        if not self.layers:
            return out.last_hidden_state, out.pooler_output
        # transformers 5 keeps the norm on the model, earlier versions on its `text_model`.
        norm = getattr(self.model, "text_model", self.model).final_layer_norm
        stacked = torch.stack([norm(states) for states in out.hidden_states[1:]], dim=1)
        return out.last_hidden_state, out.pooler_output, stacked


class Unet(torch.nn.Module):
    """The UNet; trailing inputs are ControlNet residuals (sdrt.export.residuals)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, sample, timestep, encoder_hidden_states, *residuals):
        return self.model(sample, timestep, encoder_hidden_states, return_dict=False, **added_residuals(residuals))[0]


class GuidanceEmbeddedUnet(Unet):
    """An LCM-distilled UNet: the guidance scale comes in as an embedding (`timestep_cond`)."""

    def forward(self, sample, timestep, encoder_hidden_states, timestep_cond, *residuals):
        return self.model(
            sample,
            timestep,
            encoder_hidden_states,
            timestep_cond=timestep_cond,
            return_dict=False,
            **added_residuals(residuals),
        )[0]


class VaeDecoder(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample):
        return self.vae.decode(latent_sample, return_dict=False)[0]


class VaeEncoder(torch.nn.Module):
    """Image -> the latent distribution's mean and standard deviation (logvar clamped as
    diffusers does), so the runtime draws the sample with the user's seed."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, sample):
        distribution = self.vae.encode(sample, return_dict=False)[0]
        return distribution.mean, distribution.std


@dataclass(frozen=True)
class ComponentExport:
    name: str  # also the sub-folder, as OnnxStableDiffusionPipeline expects
    module: torch.nn.Module
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    make_inputs: Callable[[torch.Generator, int, int, int], tuple[torch.Tensor, ...]]
    # Inputs with a default value in the graph (an initializer of the same name): callers may leave them out.
    defaults: dict[str, np.ndarray] = field(default_factory=dict)
    # The model whose layers LoRA files name (the UNet, a text model): it gets a weights map.
    lora_model: torch.nn.Module | None = None
    # With --fused-attention (CPU, fp32): its RMS norms and tanh GELUs as ONNX Runtime's fused
    # operators (sdrt.export.dit_cpu_fusions).
    cpu_fusions: bool = False

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {
            t.name: {axis: dim for axis, dim in enumerate(t.shape) if isinstance(dim, str)}
            for t in self.inputs + self.outputs
        }


def extra_tokens_spec(width: int) -> TensorSpec:
    return TensorSpec(EXTRA_EMBEDDINGS, "float32", [EXTRA_TOKENS, width])


def no_extra_tokens(width: int) -> dict[str, np.ndarray]:
    """The default of the extra rows: one row no id addresses."""
    return {EXTRA_EMBEDDINGS: np.zeros((1, width), np.float32)}


def component_exports(pipeline, geometry: ModelGeometry, num_train_timesteps: int) -> list[ComponentExport]:
    """The engines of a pipeline: SD 1.x/2.x here, SDXL in sdrt.export.sdxl."""
    if is_sdxl(pipeline):
        from sdrt.export.sdxl import sdxl_component_exports

        return sdxl_component_exports(pipeline, geometry, num_train_timesteps)
    return clip_component_exports(pipeline, geometry, num_train_timesteps)


def vae_exports(pipeline, geometry: ModelGeometry) -> list[ComponentExport]:
    """The VAE decoder and encoder (the encoder's output is the latent distribution)."""
    g = geometry
    f32 = "float32"

    def decoder_inputs(gen, batch, latent_h, latent_w):
        return (torch.randn(batch, g.latent_channels, latent_h, latent_w, generator=gen),)

    def encoder_inputs(gen, batch, latent_h, latent_w):
        shape = (batch, 3, latent_h * g.vae_scale_factor, latent_w * g.vae_scale_factor)
        return (torch.rand(shape, generator=gen) * 2 - 1,)

    latent = [g.latent_channels, LATENT_HEIGHT, LATENT_WIDTH]
    return [
        ComponentExport(
            "vae_decoder",
            VaeDecoder(pipeline.vae),
            [TensorSpec("latent_sample", f32, [BATCH, *latent])],
            [TensorSpec("sample", f32, [BATCH, 3, HEIGHT, WIDTH])],
            decoder_inputs,
        ),
        ComponentExport(
            "vae_encoder",
            VaeEncoder(pipeline.vae),
            [TensorSpec("sample", f32, [BATCH, 3, HEIGHT, WIDTH])],
            [TensorSpec("latent_mean", f32, [BATCH, *latent]), TensorSpec("latent_std", f32, [BATCH, *latent])],
            encoder_inputs,
        ),
    ]


def clip_component_exports(pipeline, geometry: ModelGeometry, num_train_timesteps: int) -> list[ComponentExport]:
    """The four engines of a Stable Diffusion 1.x/2.x pipeline."""
    g = geometry
    f32 = "float32"

    text_config = pipeline.text_encoder.config
    make_text = text_inputs_maker(g.text_length, text_config.vocab_size)

    def text_inputs(gen, batch, latent_h, latent_w):
        return make_text(gen, batch, latent_h, latent_w, text_config.hidden_size)

    guidance_width = getattr(pipeline.unet.config, "time_cond_proj_dim", None)
    residuals = residual_layout(pipeline.unet.config)

    def unet_inputs(gen, batch, latent_h, latent_w):
        inputs = (
            torch.randn(2 * batch, g.unet_in_channels, latent_h, latent_w, generator=gen),
            torch.randint(0, num_train_timesteps, (2 * batch,), generator=gen).to(torch.float32),
            torch.randn(2 * batch, g.context_length(batch), g.text_hidden_size, generator=gen),
        )
        inputs += (torch.randn(2 * batch, guidance_width, generator=gen),) if guidance_width else ()
        return inputs + residual_inputs(gen, residuals, 2 * batch, latent_h, latent_w)

    latent = [g.latent_channels, LATENT_HEIGHT, LATENT_WIDTH]
    layers = FAMILIES[clip_family(pipeline)].clip_skip_applies
    text_outputs = [
        TensorSpec(LAST_HIDDEN, f32, [BATCH, g.text_length, g.text_hidden_size]),
        TensorSpec(POOLED, f32, [BATCH, g.text_hidden_size]),
    ]
    if layers:
        depth = pipeline.text_encoder.config.num_hidden_layers
        text_outputs.append(TensorSpec(LAYER_HIDDEN, f32, [BATCH, depth, g.text_length, g.text_hidden_size]))
    return [
        ComponentExport(
            "text_encoder",
            TextEncoder(pipeline.text_encoder, layers),
            [TensorSpec("input_ids", "int32", [BATCH, g.text_length]), extra_tokens_spec(text_config.hidden_size)],
            text_outputs,
            text_inputs,
            no_extra_tokens(text_config.hidden_size),
            lora_model=pipeline.text_encoder,
        ),
        ComponentExport(
            "unet",
            GuidanceEmbeddedUnet(pipeline.unet) if guidance_width else Unet(pipeline.unet),
            [
                TensorSpec("sample", f32, [UNET_BATCH, g.unet_in_channels, LATENT_HEIGHT, LATENT_WIDTH]),
                TensorSpec("timestep", f32, [TIMESTEP_BATCH]),
                TensorSpec(UNET_CONTEXT, f32, [UNET_BATCH, TEXT_SEQUENCE, g.text_hidden_size]),
                *([TensorSpec(TIMESTEP_COND, f32, [UNET_BATCH, guidance_width])] if guidance_width else []),
                *residual_specs(residuals),
            ],
            [TensorSpec("out_sample", f32, [UNET_BATCH, *latent])],
            unet_inputs,
            residual_defaults(residuals),
            lora_model=pipeline.unet,
        ),
        *vae_exports(pipeline, g),
    ]
