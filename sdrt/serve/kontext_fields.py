"""FLUX.1 Kontext's sizes on both servers (sdrt's extension: neither A1111's API nor OpenAI's has
them), named as GenerationRequest names them (sdrt.runtime.families.flux_kontext_sizes):

- `kontext_auto_resize`: false encodes the reference at its own size (absent: resized to the
  preferred resolution nearest its aspect ratio, as FluxKontextPipeline);
- `kontext_max_area`: the output's area in pixels at the requested aspect ratio (absent: 1024^2).

The pipeline checks them against the served model (other models refuse them by name).
"""

from __future__ import annotations

from pydantic import BaseModel


class KontextFields(BaseModel):
    """The fields both servers' bodies take for FLUX.1 Kontext models (a base beside Body)."""

    kontext_auto_resize: bool | None = None
    kontext_max_area: int | None = None

    def kontext_settings(self) -> dict:
        """The GenerationRequest fields these give."""
        return {"kontext_auto_resize": self.kontext_auto_resize, "kontext_max_area": self.kontext_max_area}
