"""How a request's texts are read (per request; the model's tokenizers and encoders are load-time)."""

from __future__ import annotations

from dataclasses import dataclass

from sdrt.runtime.text.prompts.emphasis import DEFAULT_EMPHASIS, EmphasisMode, emphasis_mode


@dataclass(frozen=True)
class TextOptions:
    """The emphasis mode (its "None" also reads BREAK as text) and A1111's clip skip (1: the
    last layer; N: the output of the N-th layer from the end, through the final layer norm)."""

    emphasis: EmphasisMode = emphasis_mode(DEFAULT_EMPHASIS)
    clip_skip: int = 1
    t5: bool = True  # SD3: False runs without T5, zeros in its place (sdrt.runtime.text.sd3_encoders)
    max_sequence_length: int | None = None  # SD3: T5's token length (None: the export's); checked by the family
