"""A Qwen3 language model's hidden states as an ONNX text encoder (the part Z-Image and FLUX.2
klein read): int32 `input_ids` and `attention_mask` [batch, tokens] in, the hidden states of the
chosen layers out, each [batch, tokens, width], named `hidden_states_{index}`
(sdrt.runtime.text.qwen_encoder.layer_output). The batch and token axes are dynamic; no KV cache.

`layers` index transformers' `output_hidden_states` tuple as the pipelines do (0: embeddings,
i: layer i's output, the last one after the final norm; negative counts from the end):
ZImagePipeline reads (-2,), Flux2KleinPipeline stacks (9, 18, 27).
"""

from __future__ import annotations

import torch

from sdrt.export.components import BATCH, ComponentExport, TensorSpec
from sdrt.runtime.text.qwen_encoder import QWEN_IDS, QWEN_MASK, QWEN_SEQUENCE, layer_output

#: ZImagePipeline._encode_prompt's `hidden_states[-2]`.
ZIMAGE_LAYERS = (-2,)
#: Validation token counts at batch 1 and 2; the last row is padded by PADDED_TOKENS so the
#: traced graph keeps the mask (an all-ones mask lets transformers drop it).
VALIDATION_TOKENS = (9, 13)
PADDED_TOKENS = 3


def language_model(model):
    """The Qwen3Model of a Qwen3Model or Qwen3ForCausalLM (the pipelines use the base model)."""
    return model.model if hasattr(model, "lm_head") else model


def hidden_indices(layers: tuple[int, ...], num_layers: int) -> tuple[int, ...]:
    """`layers` as non-negative indices into the num_layers + 1 hidden states."""
    count = num_layers + 1
    indices = []
    for layer in layers:
        if not -count <= layer < count:
            raise ValueError(f"hidden-state layer {layer} is outside the model's {count} hidden states")
        indices.append(layer % count)
    if len(set(indices)) != len(indices):
        raise ValueError(f"hidden-state layers {layers} repeat a layer")
    return tuple(indices)


class QwenHiddenStates(torch.nn.Module):
    """ids and mask (int32, as the runtime feeds them) -> the chosen hidden states."""

    def __init__(self, model, indices: tuple[int, ...]):
        super().__init__()
        self.model = language_model(model)
        self.indices = indices

    def forward(self, input_ids, attention_mask):
        out = self.model(
            input_ids=input_ids.to(torch.int64),
            attention_mask=attention_mask.to(torch.bool),
            output_hidden_states=True,
            use_cache=False,
        )
        return tuple(out.hidden_states[index] for index in self.indices)


def qwen_encoder_export(model, name: str, layers: tuple[int, ...] = ZIMAGE_LAYERS) -> ComponentExport:
    """The encoder's ComponentExport: validated against the module at two shapes, padded rows
    included (their states are compared too: the graph is the module, padding and all)."""
    config = language_model(model).config
    indices = hidden_indices(layers, config.num_hidden_layers)

    def make_inputs(gen, batch, latent_h, latent_w):
        length = VALIDATION_TOKENS[min(batch, len(VALIDATION_TOKENS)) - 1]
        ids = torch.randint(0, config.vocab_size, (batch, length), generator=gen, dtype=torch.int32)
        mask = torch.ones(batch, length, dtype=torch.int32)
        mask[-1, length - PADDED_TOKENS :] = 0
        return ids, mask

    width = config.hidden_size
    return ComponentExport(
        name,
        QwenHiddenStates(model, indices),
        [
            TensorSpec(QWEN_IDS, "int32", [BATCH, QWEN_SEQUENCE]),
            TensorSpec(QWEN_MASK, "int32", [BATCH, QWEN_SEQUENCE]),
        ],
        [TensorSpec(layer_output(index), "float32", [BATCH, QWEN_SEQUENCE, width]) for index in indices],
        make_inputs,
    )
