"""What a Stable Diffusion 3 / 3.5 export's runtime reads from the model
(sdrt.runtime.families.sd3), and the tensor and dimension names only SD3's engines have."""

from __future__ import annotations

from dataclasses import dataclass

#: The transformer's per-layer skip mask, float32 [layers]: 1 skips that layer (skip-layer guidance).
SKIP_LAYERS = "skip_layers"
#: The transformer's text sequence: CLIP's tokens then T5's (or T5's zeros).
SD3_SEQUENCE = "sd3_sequence"
SKIP_LAYER_COUNT = "transformer_layers"
#: A CLIP encoder's every hidden state, the embeddings' first, without the final layer norm:
#: float32 [batch, layers + 1, tokens, width]. StableDiffusion3Pipeline's clip skip k reads
#: hidden_states[-(k + 2)] (sdrt.runtime.text.sd3_encoders).
CLIP_LAYER_STATES = "clip_layer_states"


@dataclass(frozen=True)
class Sd3Spec:
    clip_encoders: list[str]  # [CLIP-L, CLIP-G]: penultimate hidden states and projected pooled outputs
    clip_tokenizers: list[str]  # their tokenizer folders
    t5_encoder: str | None  # T5's component (None: exported --no-t5, zeros in its place)
    t5_tokenizer: str | None
    max_sequence_length: int  # T5's padded length (StableDiffusion3Pipeline's max_sequence_length)
    joint_attention_dim: int  # the text width CLIP's joined states are padded to
    transformer_layers: int  # the skip mask's length
    t5_precision: str  # T5 overflows in fp16 on real weights: fp32 unless asked
