"""FLUX.1's transformer in three parts for the step caches (`sdrt export --cache-graphs`;
sdrt.runtime.features.step_caches runs them). diffusers' FirstBlockCache hook splits the model's
blocks (double-stream, then single-stream) into the first one, the ones between and the last;
the parts cut the transformer at the same places:

- `transformer_head`: the embeddings (x_embedder, time/text/guidance, context_embedder, RoPE)
  and the first block, fed as the whole transformer is. Outputs: the block's image and text
  streams, its image-stream residual (output less input: what the hook compares) and `temb`;
- `transformer_body`: every other block on the head's streams (RoPE recomputed from the
  position ids: it has no weights). Output: the last block's image stream;
- `transformer_tail`: norm_out and proj_out on an image stream (the body's, or on a cached
  step the head's plus the residual kept from the last full step).

The parts hold disjoint weights: together they are the transformer's once. They are written
beside the one-graph transformer (which plain generation keeps running), so an export with them
holds the transformer's weights twice on disk, and a process that has run a cached request holds
both copies in memory (the parts load on first use). FLUX.1 Fill and Kontext split the same way.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from sdrt.errors import ConfigError
from sdrt.export.components import UNET_BATCH, ComponentExport, TensorSpec
from sdrt.export.flux import TIMESTEP_SCALE
from sdrt.runtime.manifest import (
    BODY_HIDDEN,
    DENOISER_OUTPUT,
    FIRST_RESIDUAL,
    HEAD_CONTEXT,
    HEAD_HIDDEN,
    IMAGE_TOKENS,
    IMG_IDS,
    T5_SEQUENCE,
    TEMB,
    TRANSFORMER,
    TRANSFORMER_BODY,
    TRANSFORMER_HEAD,
    TRANSFORMER_TAIL,
    TXT_IDS,
)

#: diffusers' hook keeps the first block as the head and the last as the tail: two at least.
MIN_BLOCKS = 2


def _blocks(model) -> list[torch.nn.Module]:
    """The blocks in the order the hook lists them (the model's children named as its block lists)."""
    return [*model.transformer_blocks, *model.single_transformer_blocks]


def _rope(model, img_ids, txt_ids):
    return model.pos_embed(torch.cat((txt_ids, img_ids), dim=0))


class FluxHead(torch.nn.Module):
    """FluxTransformer2DModel.forward up to the first block's output (same arithmetic)."""

    def __init__(self, model, guidance: bool):
        super().__init__()
        self.model, self.guidance = model, guidance

    def forward(self, hidden_states, timestep, encoder_hidden_states, pooled_projections, img_ids, txt_ids, *guidance):
        model = self.model
        hidden = model.x_embedder(hidden_states)
        # The pipeline passes t / 1000 and the model multiplies it back (sdrt.export.flux.FluxTransformer).
        time = (timestep / TIMESTEP_SCALE).to(hidden.dtype) * TIMESTEP_SCALE
        if self.guidance:
            temb = model.time_text_embed(time, guidance[0].to(hidden.dtype) * TIMESTEP_SCALE, pooled_projections)
        else:
            temb = model.time_text_embed(time, pooled_projections)
        context = model.context_embedder(encoder_hidden_states)
        context_out, hidden_out = _blocks(model)[0](
            hidden_states=hidden,
            encoder_hidden_states=context,
            temb=temb,
            image_rotary_emb=_rope(model, img_ids, txt_ids),
        )
        return hidden_out, context_out, hidden_out - hidden, temb


class FluxBody(torch.nn.Module):
    """The blocks after the first, on the head's streams."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, head_hidden, head_context, temb, img_ids, txt_ids):
        rope = _rope(self.model, img_ids, txt_ids)
        hidden, context = head_hidden, head_context
        for block in _blocks(self.model)[1:]:
            context, hidden = block(
                hidden_states=hidden, encoder_hidden_states=context, temb=temb, image_rotary_emb=rope
            )
        return hidden


class FluxTail(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, body_hidden, temb):
        return self.model.proj_out(self.model.norm_out(body_hidden, temb))


def flux_cache_exports(exports: list[ComponentExport], pipeline) -> list[ComponentExport]:
    """`exports` with the three parts after the transformer (its module already traceable:
    sdrt.export.flux_tracing), each validated against its PyTorch part as every engine is."""
    model = pipeline.transformer
    if len(_blocks(model)) < MIN_BLOCKS:
        raise ConfigError(f"--cache-graphs needs a transformer of {MIN_BLOCKS} blocks or more")
    index = next(i for i, e in enumerate(exports) if e.name == TRANSFORMER)
    whole = exports[index]
    guidance = bool(model.config.guidance_embeds)
    f32, width = "float32", model.inner_dim
    ids = [spec for spec in whole.inputs if spec.name in (IMG_IDS, TXT_IDS)]
    hidden, context = (
        TensorSpec(HEAD_HIDDEN, f32, [UNET_BATCH, IMAGE_TOKENS, width]),
        TensorSpec(HEAD_CONTEXT, f32, [UNET_BATCH, T5_SEQUENCE, width]),
    )
    temb = TensorSpec(TEMB, f32, [UNET_BATCH, width])
    body_hidden = TensorSpec(BODY_HIDDEN, f32, [UNET_BATCH, IMAGE_TOKENS, width])

    def streams(gen, batch, latent_h, latent_w):
        """Validation inputs of the body: the head's outputs on the transformer's inputs."""
        made = whole.make_inputs(gen, batch, latent_h, latent_w)
        with torch.no_grad():
            head_hidden, head_context, _, embedding = FluxHead(model, guidance)(*made)
        return head_hidden, head_context, embedding, made[4], made[5]

    def tail_inputs(gen, batch, latent_h, latent_w):
        made = streams(gen, batch, latent_h, latent_w)
        return made[0], made[2]

    parts = [
        replace(
            whole,
            name=TRANSFORMER_HEAD,
            module=FluxHead(model, guidance),
            outputs=[hidden, context, TensorSpec(FIRST_RESIDUAL, f32, hidden.shape), temb],
            lora_model=None,
        ),
        replace(
            whole,
            name=TRANSFORMER_BODY,
            module=FluxBody(model),
            inputs=[hidden, context, temb, *ids],
            outputs=[body_hidden],
            make_inputs=streams,
            defaults={},
            lora_model=None,
        ),
        replace(
            whole,
            name=TRANSFORMER_TAIL,
            module=FluxTail(model),
            inputs=[body_hidden, temb],
            outputs=[replace(whole.outputs[0], name=DENOISER_OUTPUT)],
            make_inputs=tail_inputs,
            defaults={},
            lora_model=None,
        ),
    ]
    return [*exports[: index + 1], *parts, *exports[index + 1 :]]
