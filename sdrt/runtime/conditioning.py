"""What the UNet gets besides the latents and the timestep, by model family, as UNet feeds
stacked [unconditional; conditional] along the batch when guided (diffusers' order).

- SD 1.x/2.x: the prompt's hidden states (`encoder_hidden_states`);
- SDXL (sdrt.runtime.sdxl): both encoders' hidden states, the pooled embedding
  (`text_embeds`) and the size (or aesthetic score) conditioning (`time_ids`).
"""

from __future__ import annotations

import numpy as np

from sdrt.runtime.engines import Engine
from sdrt.runtime.manifest import UNET_CONTEXT
from sdrt.runtime.request import ResolvedRequest
from sdrt.runtime.text_encoders import TextEncoders


def unet_conditioning(encoders: TextEncoders, engines: dict[str, Engine], resolved: ResolvedRequest,
                      warnings: list[str], timings: dict) -> dict[str, np.ndarray]:
    """The UNet's conditioning feeds for a request; each prompt's rows are repeated
    num_images times, consecutively, as diffusers does."""
    if encoders.sdxl is not None:
        from sdrt.runtime.sdxl import sdxl_conditioning

        return sdxl_conditioning(encoders, engines, resolved, warnings, timings)
    repeat = resolved.request.num_images
    hidden = np.repeat(encoders.encode(resolved.prompts, engines, warnings, timings).hidden, repeat, axis=0)
    if resolved.guided:
        unconditional = encoders.encode(resolved.negatives, engines, [], timings).hidden
        hidden = np.concatenate([np.repeat(unconditional, repeat, axis=0), hidden])
    return {UNET_CONTEXT: hidden}
