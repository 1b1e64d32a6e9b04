"""ControlNet residuals at export: where a UNet (or a ControlNet, which mirrors its down half)
produces them, their tensor specs and validation inputs, and how a UNet wrapper passes them on.

diffusers' UNet2DConditionModel keeps one residual for `conv_in`, one per resnet of each down
block and one per downsampler (every block but the last), then the mid block's; a ControlNet
outputs one tensor for each, and the UNet adds them (`down_block_additional_residuals`,
`mid_block_additional_residual`). SD 1.5: 12 down residuals and the mid one; SDXL: 9 and one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sdrt.runtime.manifest import (
    DOWN_RESIDUAL_PREFIX,
    LATENT_HEIGHT,
    LATENT_WIDTH,
    MID_RESIDUAL,
    UNET_BATCH,
    TensorSpec,
    downsampled,
)


@dataclass(frozen=True)
class Residual:
    name: str
    channels: int
    factor: int  # the latent's side over this tensor's


def residual_layout(config) -> list[Residual]:
    """The residuals of a UNet or ControlNet config, in diffusers' order (down blocks, then mid)."""
    blocks = list(config.block_out_channels)
    layers = config.layers_per_block
    layers = [layers] * len(blocks) if isinstance(layers, int) else list(layers)
    found, factor = [(blocks[0], 1)], 1  # conv_in's output
    for index, channels in enumerate(blocks):
        found += [(channels, factor)] * layers[index]
        if index < len(blocks) - 1:  # every block but the last ends with a downsampler
            factor *= 2
            found.append((channels, factor))
    down = [Residual(f"{DOWN_RESIDUAL_PREFIX}{index}", channels, f) for index, (channels, f) in enumerate(found)]
    return down + [Residual(MID_RESIDUAL, blocks[-1], factor)]


def residual_specs(layout: list[Residual]) -> list[TensorSpec]:
    return [
        TensorSpec(
            r.name,
            "float32",
            [UNET_BATCH, r.channels, downsampled(LATENT_HEIGHT, r.factor), downsampled(LATENT_WIDTH, r.factor)],
        )
        for r in layout
    ]


def residual_inputs(
    generator: torch.Generator, layout: list[Residual], rows: int, latent_h: int, latent_w: int
) -> tuple[torch.Tensor, ...]:
    """Random residuals for validation inputs."""
    return tuple(
        torch.randn(rows, r.channels, latent_h // r.factor, latent_w // r.factor, generator=generator) for r in layout
    )


def residual_defaults(layout: list[Residual]) -> dict[str, np.ndarray]:
    """Zero defaults of the UNet's residual inputs, [1, C, 1, 1] (broadcast by the UNet's adds):
    callers that know nothing of ControlNet (diffusers' OnnxStableDiffusionPipeline) leave them
    out. sdrt always feeds them, and TensorRT builds without defaults."""
    return {r.name: np.zeros((1, r.channels, 1, 1), np.float32) for r in layout}


def added_residuals(residuals: tuple[torch.Tensor, ...]) -> dict:
    """The UNet's keyword arguments for residuals given as trailing inputs (none: no arguments)."""
    if not residuals:
        return {}
    return {"down_block_additional_residuals": tuple(residuals[:-1]), "mid_block_additional_residual": residuals[-1]}
