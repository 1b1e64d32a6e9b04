"""`sdrt export` of a FLUX.2 [klein] pipeline: the Qwen3 encoder (sdrt.export.qwen_encoder, at
the pipeline's hidden-state layers), the transformer and the VAE (sdrt.export.flux2) exported,
validated and written with the manifest (family flux2, its settings in the flux2 section), as
sdrt.export.chroma_export does for Chroma."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sdrt.export.dit_export import export_components, same_options, write_one_tokenizer_files
from sdrt.export.flux2 import (
    FLUX2_FAMILY,
    KLEIN_LAYERS,
    KLEIN_SEQUENCE_LENGTH,
    NATIVE_PATCHED_SIDE,
    TEXT_ENCODER,
    TOKENIZER,
    flux2_dims,
    flux2_geometry,
    flux2_transformer_export,
    flux2_vae_exports,
)
from sdrt.export.model_files import versions
from sdrt.export.qwen_encoder import hidden_indices, language_model, qwen_encoder_export
from sdrt.runtime.flux2_spec import Flux2Spec
from sdrt.runtime.manifest import FORMAT_VERSION, DimRange, Manifest
from sdrt.runtime.schedulers.spaces import FLOW_PREDICTION
from sdrt.runtime.text.qwen_encoder import QWEN_SEQUENCE


def export_flux2_pipeline(
    pipeline,
    out_dir: str | Path,
    *,
    source: dict,
    options,
    overwrite: bool = False,
    progress: Callable[[str], None] = print,
    release_weights: bool = False,
    max_sequence_length: int | None = None,
    text_layers: tuple[int, ...] = KLEIN_LAYERS,
) -> Manifest:
    from sdrt.export.exporter import ExportError, staged

    if options.optimize or options.deepcache or options.tiny_vae is not None:
        raise ExportError("FLUX.2 exports take no --optimize, --deepcache or --tiny-vae yet")
    out_dir = Path(out_dir)
    length = max_sequence_length or KLEIN_SEQUENCE_LENGTH
    geometry = flux2_geometry(pipeline, length)
    depth = language_model(pipeline.text_encoder).config.num_hidden_layers
    try:
        indices = hidden_indices(text_layers, depth)
    except ValueError as error:
        raise ExportError(f"FLUX.2's text encoder: {error}") from None
    with staged(out_dir, overwrite) as staging:
        exports = [
            qwen_encoder_export(pipeline.text_encoder, TEXT_ENCODER, indices),
            flux2_transformer_export(pipeline),
            *flux2_vae_exports(pipeline, geometry),
        ]
        components = export_components(exports, staging, geometry, same_options(options), progress, release_weights)
        write_one_tokenizer_files(
            pipeline,
            staging,
            list(components),
            TOKENIZER,
            type(pipeline).__name__,
            is_distilled=bool(pipeline.config.is_distilled),
        )
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            family=FLUX2_FAMILY,
            prediction_type=FLOW_PREDICTION,
            # The graphs normalise and denormalise the latents themselves (sdrt.export.flux2).
            vae_scaling_factor=1.0,
            vae_shift_factor=0.0,
            vae_scale_factor=geometry.vae_scale_factor,
            latent_channels=geometry.latent_channels,
            unet_in_channels=geometry.unet_in_channels,
            text_length=geometry.text_length,
            text_hidden_size=geometry.text_hidden_size,
            native_height=NATIVE_PATCHED_SIDE * geometry.vae_scale_factor,
            native_width=NATIVE_PATCHED_SIDE * geometry.vae_scale_factor,
            dims={**flux2_dims(geometry, length), QWEN_SEQUENCE: DimRange(1, length, length)},
            components=components,
            source=source,
            versions=versions(),
            flux2=Flux2Spec(
                text_encoder=TEXT_ENCODER,
                tokenizer=TOKENIZER,
                max_sequence_length=length,
                text_layers=list(indices),
                distilled=bool(pipeline.config.is_distilled),
            ),
        )
        manifest.save(staging)
    return manifest
