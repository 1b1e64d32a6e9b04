"""Stable Diffusion 3's fields on both servers (sdrt's extension: neither A1111's API nor
OpenAI's has them), named as GenerationRequest names them:

- `skip_layer_guidance`: {"layers": [7, 8, 9], "scale", "start", "stop"}, the last three with
  StableDiffusion3Pipeline's defaults (sdrt.runtime.features.skip_layers);
- `t5`: false runs without T5 (its zeros, as diffusers without text_encoder_3);
- `max_sequence_length`: T5's token length (the export's, 256, when absent).

The pipeline checks them against the served model (other families refuse them by name), so a
bad value is a 400 naming the field, as every request field.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from sdrt.runtime.features.skip_layers import DEFAULT_SCALE, DEFAULT_START, DEFAULT_STOP, SkipLayerGuidance

#: More layer indices than any SD3 transformer has (SD3.5 Large: 38 layers).
MAX_SKIP_LAYERS = 64


class SkipLayerField(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    layers: list[StrictInt] = Field(min_length=1, max_length=MAX_SKIP_LAYERS)
    scale: float = DEFAULT_SCALE
    start: float = Field(DEFAULT_START, ge=0, le=1)
    stop: float = Field(DEFAULT_STOP, ge=0, le=1)


class Sd3Fields(BaseModel):
    """The fields both servers' bodies take for SD3 models (a base beside sdrt.serve.schemas.Body:
    that module's bodies inherit it, so it cannot import Body)."""

    skip_layer_guidance: SkipLayerField | None = None
    t5: bool | None = None
    max_sequence_length: int | None = None

    def sd3_settings(self) -> dict:
        """The GenerationRequest fields these give."""
        skip = self.skip_layer_guidance
        guidance = None if skip is None else SkipLayerGuidance(tuple(skip.layers), skip.scale, skip.start, skip.stop)
        return {"skip_layer_guidance": guidance, "t5": self.t5, "max_sequence_length": self.max_sequence_length}
