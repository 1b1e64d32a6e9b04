"""Stable Diffusion 3's per-request text settings, checked against the export before encoding:

- clip skip (A1111's count, `clip_skip` N; 1 is the model's own penultimate layer) is
  StableDiffusion3Pipeline's `clip_skip` N - 1: CLIP-L's and CLIP-G's hidden_states[-(N + 1)],
  without the final layer norm, read from the export's stacked states (CLIP_LAYER_STATES), for
  the prompt only (the pipeline encodes the negative prompt without it);
- `max_sequence_length`: T5's token length for the request, 1 to the export's (256 unless
  exported otherwise); without T5, the length of its zeros.
"""

from __future__ import annotations

import numpy as np

from sdrt.errors import GenerationError
from sdrt.runtime.manifest import Manifest
from sdrt.runtime.sd3_spec import CLIP_LAYER_STATES, Sd3Spec


def clip_skip_state(clip_skip: int) -> int:
    """The index into CLIP_LAYER_STATES's layer axis (from the end) for A1111's clip skip."""
    return -(clip_skip + 1)


def check_clip_skip(clip_skip: int, manifest: Manifest, spec: Sd3Spec) -> None:
    if clip_skip <= 1:
        return
    for name in spec.clip_encoders:
        output = next((t for t in manifest.components[name].outputs if t.name == CLIP_LAYER_STATES), None)
        if output is None:
            raise GenerationError(
                f"this export's {name} gives no layer states, which clip skip needs: re-export the model "
                "with this sdrt version",
                "clip_skip",
            )
        layers = int(output.shape[1]) - 1  # the embeddings' states come first
        if clip_skip > layers:
            raise GenerationError(f"clip skip {clip_skip} is more than {name}'s {layers} layers", "clip_skip")


def check_max_sequence_length(value, spec: Sd3Spec) -> None:
    if value is None:
        return
    limit = spec.max_sequence_length
    whole = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not whole or not 1 <= value <= limit:
        raise GenerationError(
            f"max_sequence_length must be a whole number from 1 to {limit} (this export's T5 length), got {value!r}",
            "max_sequence_length",
        )
