"""What a FLUX.2 [klein] export's runtime reads from the model (sdrt.runtime.families.flux2),
and the dimension names only its engines have."""

from __future__ import annotations

from dataclasses import dataclass

#: The transformer's text tokens: the Qwen3 prompt padded to max_sequence_length.
KLEIN_SEQUENCE = "klein_sequence"
#: RoPE position ids of FLUX.2: (time, row, column, text position) per token.
POSITION_AXES = 4


@dataclass(frozen=True)
class Flux2Spec:
    text_encoder: str  # the Qwen3 encoder's component: the hidden states of `text_layers`, stacked
    tokenizer: str  # its tokenizer folder
    max_sequence_length: int  # the padded prompt length (Flux2KleinPipeline's max_sequence_length)
    text_layers: list[int]  # the hidden-state layers read (text_encoder_out_layers), in order
    distilled: bool  # Flux2KleinPipeline's is_distilled: no classifier-free guidance
