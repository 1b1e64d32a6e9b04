"""`sdrt export` of a Z-Image pipeline: its engines (sdrt.export.zimage) exported, validated and
written with the manifest (family zimage; the Qwen encoder and tokenizer in the flux section,
whose `t5_precision` holds the text encoder's precision), as sdrt.export.chroma_export does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sdrt.export.dit_export import export_components, same_options, write_one_tokenizer_files
from sdrt.export.flux import NATIVE_LATENT_SIDE, flux_dims
from sdrt.export.model_files import versions
from sdrt.export.zimage import (
    TEXT_ENCODER,
    TOKENIZER,
    ZIMAGE_FAMILY,
    zimage_component_exports,
    zimage_geometry,
)
from sdrt.runtime.families.zimage_tokens import IMAGE_SLOTS, SEQ_MULTIPLE, TEXT_SLOTS, slots
from sdrt.runtime.manifest import (
    FORMAT_VERSION,
    IMAGE_TOKENS,
    LATENT_HEIGHT,
    T5_SEQUENCE,
    DimRange,
    FluxSpec,
    Manifest,
)
from sdrt.runtime.schedulers.spaces import FLOW_PREDICTION
from sdrt.runtime.text.qwen_encoder import QWEN_SEQUENCE
from sdrt.runtime.text.qwen_tokenizer import DEFAULT_MAX_LENGTH

#: Validation latents (16x16 at batch 1: 64 image tokens, no pad slots; 8x12 at batch 2: 24
#: tokens in 32 slots), small enough for the VAE's validation to stay quick.
VALIDATION_LATENTS = 16


def zimage_dims(geometry, max_sequence_length: int) -> dict[str, DimRange]:
    dims = flux_dims(geometry, max_sequence_length)
    for unused in (IMAGE_TOKENS, T5_SEQUENCE):  # FLUX's token axes; Z-Image's are slots
        dims.pop(unused)
    latent = dims[LATENT_HEIGHT]
    most = slots((latent.max // 2) ** 2)
    return {
        **dims,
        IMAGE_SLOTS: DimRange(SEQ_MULTIPLE, slots((latent.opt // 2) ** 2), most, SEQ_MULTIPLE),
        TEXT_SLOTS: DimRange(SEQ_MULTIPLE, slots(max_sequence_length), slots(max_sequence_length), SEQ_MULTIPLE),
        QWEN_SEQUENCE: DimRange(1, max_sequence_length, max_sequence_length),
    }


def export_zimage_pipeline(
    pipeline,
    out_dir: str | Path,
    *,
    source: dict,
    options,
    overwrite: bool = False,
    progress: Callable[[str], None] = print,
    release_weights: bool = False,
) -> Manifest:
    from sdrt.export.exporter import ExportError, staged

    if options.optimize or options.deepcache or options.tiny_vae is not None or options.no_t5:
        raise ExportError("Z-Image exports take no --optimize, --deepcache, --tiny-vae or --no-t5 yet")
    out_dir = Path(out_dir)
    length = DEFAULT_MAX_LENGTH
    geometry = zimage_geometry(pipeline, VALIDATION_LATENTS)
    with staged(out_dir, overwrite) as staging:
        exports = zimage_component_exports(pipeline, geometry)
        components = export_components(exports, staging, geometry, same_options(options), progress, release_weights)
        write_one_tokenizer_files(pipeline, staging, list(components), TOKENIZER, "ZImagePipeline")
        vae = pipeline.vae.config
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            family=ZIMAGE_FAMILY,
            prediction_type=FLOW_PREDICTION,
            vae_scaling_factor=float(vae.scaling_factor),
            vae_shift_factor=float(getattr(vae, "shift_factor", None) or 0.0),
            vae_scale_factor=geometry.vae_scale_factor,
            latent_channels=geometry.latent_channels,
            unet_in_channels=geometry.unet_in_channels,
            text_length=length,
            text_hidden_size=geometry.text_hidden_size,
            native_height=NATIVE_LATENT_SIDE * geometry.vae_scale_factor,
            native_width=NATIVE_LATENT_SIDE * geometry.vae_scale_factor,
            dims=zimage_dims(geometry, length),
            components=components,
            source=source,
            versions=versions(),
            flux=FluxSpec(
                text_encoders=[TEXT_ENCODER],
                tokenizers=[TOKENIZER],
                max_sequence_length=length,
                guidance_embeds=False,
                t5_precision=options.precision_of(TEXT_ENCODER),
            ),
        )
        manifest.save(staging)
    return manifest
