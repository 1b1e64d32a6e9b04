"""Z-Image's engines, as diffusers' `ZImagePipeline` runs them:

- `text_encoder`: the Qwen3 model's hidden_states[-2] with the attention mask
  (sdrt.export.qwen_encoder); the runtime keeps the real positions, as the pipeline does;
- `transformer`: ZImageTransformer2DModel's forward in basic (non-omni) mode on dense, padded
  inputs: the runtime packs, pads and positions the tokens (sdrt.runtime.families.zimage_tokens
  documents the layout and why no attention mask is needed); the graph embeds them, puts the
  pad tokens in the pad slots, runs the refiners and the single-stream blocks and returns the
  image slots' prediction negated, with the pipeline's timestep (1000 - t) / 1000. The model's
  complex RoPE is the same arithmetic on real cos/sin tables (ONNX has no complex numbers);
- the 16-channel VAE (sdrt.export.components.vae_exports), decoded at latents / scaling + shift.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sdrt.export.components import TIMESTEP_BATCH, UNET_BATCH, ComponentExport, ModelGeometry, TensorSpec, vae_exports
from sdrt.export.flux import TIMESTEP_SCALE
from sdrt.export.flux_tracing import TracedRmsNorm
from sdrt.export.qwen_encoder import ZIMAGE_LAYERS, language_model, qwen_encoder_export
from sdrt.runtime.families.zimage_tokens import (
    IMAGE_PAD,
    IMAGE_SLOTS,
    PATCH,
    TEXT_PAD,
    TEXT_SLOTS,
    transformer_feeds,
)
from sdrt.runtime.manifest import DENOISER_OUTPUT, DENOISER_TIMESTEP, HIDDEN_STATES, IMG_IDS, TXT_IDS, UNET_CONTEXT

ZIMAGE_CLASSES = ("ZImagePipeline", "ZImageImg2ImgPipeline")
ZIMAGE_FAMILY = "zimage"
TEXT_ENCODER, TOKENIZER = "text_encoder", "tokenizer"
#: The transformer's patch sizes (spatial, frame) the pipeline calls it with.
PATCH_KEY = f"{PATCH}-1"
#: Validation caption lengths at batch 1 and 2 (one pads to 32 slots, one to 64).
VALIDATION_CAPTIONS = (9, 40)
#: Each rotated pair: (real, imaginary).
PAIR = 2


def is_zimage(pipeline) -> bool:
    return type(pipeline).__name__ in ZIMAGE_CLASSES


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """ZSingleStreamAttnProcessor's complex product x * e^(i angle) on [batch, tokens, heads,
    dim] pairs (real, imaginary), in float32; cos, sin: [tokens, dim / 2]."""
    pairs = x.float().reshape(x.shape[0], x.shape[1], x.shape[2], -1, PAIR)
    real, imaginary = pairs[..., 0], pairs[..., 1]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    rotated = torch.stack([real * cos - imaginary * sin, real * sin + imaginary * cos], dim=-1)
    return rotated.flatten(3).type_as(x)


class TracedZImageAttnProcessor:
    """ZSingleStreamAttnProcessor with real RoPE (`freqs_cis` is (cos, sin)) and PyTorch SDPA."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, freqs_cis=None):
        def heads(tensor):
            return tensor.reshape(tensor.shape[0], tensor.shape[1], attn.heads, -1)

        query, key, value = (heads(projection(hidden_states)) for projection in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if freqs_cis is not None:
            cos, sin = freqs_cis
            query, key = rotate(query, cos, sin), rotate(key, cos, sin)
        attended = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
        attended = attended.transpose(1, 2).flatten(2, 3).to(query.dtype)
        return attn.to_out[0](attended)


class ZImageTransformer(torch.nn.Module):
    """The transformer on the runtime's dense inputs (see the module docstring)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        for module in list(model.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, torch.nn.RMSNorm):
                    setattr(module, name, TracedRmsNorm(child))
                if type(child).__name__ == "Attention":
                    child.set_processor(TracedZImageAttnProcessor())
        rope = model.rope_embedder
        tables = rope.precompute_freqs_cis(rope.axes_dims, rope.axes_lens, theta=rope.theta)
        for axis, table in enumerate(tables):  # complex64, as diffusers computes them
            self.register_buffer(f"cos_{axis}", table.real.contiguous(), persistent=False)
            self.register_buffer(f"sin_{axis}", table.imag.contiguous(), persistent=False)
        self.axes = len(tables)

    def rope(self, ids):
        cos = torch.cat([getattr(self, f"cos_{axis}")[ids[:, axis]] for axis in range(self.axes)], dim=-1)
        sin = torch.cat([getattr(self, f"sin_{axis}")[ids[:, axis]] for axis in range(self.axes)], dim=-1)
        return cos, sin

    def forward(self, hidden_states, timestep, encoder_hidden_states, image_pad, text_pad, img_ids, txt_ids):
        model = self.model
        t = (TIMESTEP_SCALE - timestep) / TIMESTEP_SCALE
        adaln = model.t_embedder(t * model.t_scale).type_as(hidden_states)
        x = model.all_x_embedder[PATCH_KEY](hidden_states)
        x = torch.where(image_pad[None, :, None] > 0, model.x_pad_token, x)
        x_cos, x_sin = self.rope(img_ids)
        for layer in model.noise_refiner:
            x = layer(x, None, (x_cos, x_sin), adaln)
        caption = model.cap_embedder(encoder_hidden_states)
        caption = torch.where(text_pad[None, :, None] > 0, model.cap_pad_token, caption)
        c_cos, c_sin = self.rope(txt_ids)
        for layer in model.context_refiner:
            caption = layer(caption, None, (c_cos, c_sin))
        unified = torch.cat([x, caption], dim=1)
        freqs = (torch.cat([x_cos, c_cos]), torch.cat([x_sin, c_sin]))
        for layer in model.layers:
            unified = layer(unified, None, freqs, adaln)
        out = model.all_final_layer[PATCH_KEY](unified[:, : hidden_states.shape[1]], c=adaln)
        return -out


def zimage_geometry(pipeline, native_latent_size: int) -> ModelGeometry:
    transformer, vae = pipeline.transformer.config, pipeline.vae.config
    return ModelGeometry(
        latent_channels=vae.latent_channels,
        unet_in_channels=transformer.in_channels,
        text_length=1,  # the caption has no fixed length (text_slots is dynamic)
        text_hidden_size=transformer.cap_feat_dim,
        vae_scale_factor=2 ** (len(vae.block_out_channels) - 1),
        unet_size_multiple=PATCH,
        native_latent_size=native_latent_size,
    )


def zimage_component_exports(pipeline, geometry: ModelGeometry) -> list[ComponentExport]:
    f32 = "float32"
    config = pipeline.transformer.config
    features = PATCH * PATCH * config.in_channels
    width = config.cap_feat_dim

    def transformer_inputs(gen, batch, latent_h, latent_w):
        length = VALIDATION_CAPTIONS[min(batch, len(VALIDATION_CAPTIONS)) - 1]
        sample = torch.randn(batch, config.in_channels, latent_h, latent_w, generator=gen)
        caption = torch.randn(batch, length, width, generator=gen)
        feeds = transformer_feeds(sample.numpy(), caption.numpy())
        return (
            torch.from_numpy(feeds[HIDDEN_STATES]),
            torch.rand(batch, generator=gen) * TIMESTEP_SCALE,
            torch.from_numpy(feeds[UNET_CONTEXT]),
            torch.from_numpy(feeds[IMAGE_PAD]),
            torch.from_numpy(feeds[TEXT_PAD]),
            torch.from_numpy(feeds[IMG_IDS]),
            torch.from_numpy(feeds[TXT_IDS]),
        )

    return [
        qwen_encoder_export(language_model(pipeline.text_encoder), TEXT_ENCODER, ZIMAGE_LAYERS),
        ComponentExport(
            "transformer",
            ZImageTransformer(pipeline.transformer),
            [
                TensorSpec(HIDDEN_STATES, f32, [UNET_BATCH, IMAGE_SLOTS, features]),
                TensorSpec(DENOISER_TIMESTEP, f32, [TIMESTEP_BATCH]),
                TensorSpec(UNET_CONTEXT, f32, [UNET_BATCH, TEXT_SLOTS, width]),
                TensorSpec(IMAGE_PAD, f32, [IMAGE_SLOTS]),
                TensorSpec(TEXT_PAD, f32, [TEXT_SLOTS]),
                TensorSpec(IMG_IDS, "int64", [IMAGE_SLOTS, 3]),
                TensorSpec(TXT_IDS, "int64", [TEXT_SLOTS, 3]),
            ],
            [TensorSpec(DENOISER_OUTPUT, f32, [UNET_BATCH, IMAGE_SLOTS, features])],
            transformer_inputs,
            lora_model=pipeline.transformer,  # the wrapper keeps diffusers' module paths under it
        ),
        *vae_exports(pipeline, geometry),
    ]
