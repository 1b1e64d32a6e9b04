"""A tiny VAE (diffusers' `AutoencoderTiny`: TAESD for SD 1.x/2.x, TAESDXL for SDXL) exported
beside the model's VAE: `vae_decoder_tiny` with the same tensors as `vae_decoder`, and
`vae_encoder_tiny`, whose latents are deterministic (no distribution to sample). Requests pick
them with `vae="tiny"` (much cheaper decodes and encodes, and previews during denoising).

`AutoencoderTiny.decode` takes the latents divided by its own scaling factor (1 for TAESD:
it decodes the UNet's scaled latents as they are) and returns pixels in [-1, 1], as the full
VAE's decoder does, so one runtime path decodes with either (sdrt.runtime.vae).
"""

from __future__ import annotations

import torch

from sdrt.errors import ModelFolderError
from sdrt.export.components import (
    BATCH,
    HEIGHT,
    LATENT_HEIGHT,
    LATENT_WIDTH,
    WIDTH,
    ComponentExport,
    ModelGeometry,
    VaeDecoder,
)
from sdrt.runtime.manifest import TINY_VAE_DECODER, TINY_VAE_ENCODER, TensorSpec, TinyVaeSpec


class TinyVaeEncoder(torch.nn.Module):
    """Image -> latents (AutoencoderTiny's are deterministic; the decoder is components.VaeDecoder)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, sample):
        return self.vae.encode(sample, return_dict=False)[0]


def load_tiny_vae(source: str):
    """An AutoencoderTiny in float32 from a folder or a hub id."""
    from diffusers import AutoencoderTiny

    try:
        return AutoencoderTiny.from_pretrained(source)
    except Exception as error:  # diffusers raises many types for a bad or unreachable model
        raise ModelFolderError(f"cannot load the tiny VAE {source}: {str(error).splitlines()[0]}") from None


def tiny_vae_exports(vae, geometry: ModelGeometry) -> tuple[list[ComponentExport], TinyVaeSpec]:
    """The decoder's and encoder's exports and the manifest entry, once the tiny VAE is known to
    fit the model."""
    config = vae.config
    factor = config.upsampling_scaling_factor ** (len(config.decoder_block_out_channels) - 1)
    if config.latent_channels != geometry.latent_channels or factor != geometry.vae_scale_factor:
        raise ModelFolderError(
            f"the tiny VAE takes {config.latent_channels} latent channels and upsamples "
            f"{factor}x, the model {geometry.latent_channels} and {geometry.vae_scale_factor}x: "
            "use the tiny VAE of this model's family (TAESD for SD 1.x/2.x, TAESDXL for SDXL)"
        )

    def decoder_inputs(gen, batch, latent_h, latent_w):
        return (torch.randn(batch, geometry.latent_channels, latent_h, latent_w, generator=gen),)

    def encoder_inputs(gen, batch, latent_h, latent_w):
        shape = (batch, 3, latent_h * geometry.vae_scale_factor, latent_w * geometry.vae_scale_factor)
        return (torch.rand(shape, generator=gen) * 2 - 1,)

    latent = [BATCH, geometry.latent_channels, LATENT_HEIGHT, LATENT_WIDTH]
    image = [BATCH, 3, HEIGHT, WIDTH]
    components = [
        ComponentExport(
            TINY_VAE_DECODER,
            VaeDecoder(vae),
            [TensorSpec("latent_sample", "float32", latent)],
            [TensorSpec("sample", "float32", image)],
            decoder_inputs,
        ),
        ComponentExport(
            TINY_VAE_ENCODER,
            TinyVaeEncoder(vae),
            [TensorSpec("sample", "float32", image)],
            [TensorSpec("latents", "float32", latent)],
            encoder_inputs,
        ),
    ]
    return components, TinyVaeSpec(float(config.scaling_factor), float(getattr(config, "shift_factor", 0.0) or 0.0))
