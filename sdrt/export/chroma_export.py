"""`sdrt export` of a Chroma pipeline: its engines (sdrt.export.chroma) exported, validated and
written with the manifest (family chroma, the T5 settings in the flux section), as
sdrt.export.flux_export does for FLUX.1."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sdrt.export.chroma import (
    CHROMA_FAMILY,
    CHROMA_SEQUENCE,
    T5_ENCODER,
    TOKENIZER,
    chroma_component_exports,
    chroma_geometry,
    chroma_spec,
)
from sdrt.export.dit_export import export_components, write_one_tokenizer_files
from sdrt.export.flux import NATIVE_LATENT_SIDE, component_options, flux_dims
from sdrt.export.flux_export import t5_precision_for
from sdrt.export.model_files import versions
from sdrt.runtime.manifest import FORMAT_VERSION, Manifest
from sdrt.runtime.schedulers.spaces import FLOW_PREDICTION


def export_chroma_pipeline(
    pipeline,
    out_dir: str | Path,
    *,
    source: dict,
    options,
    overwrite: bool = False,
    progress: Callable[[str], None] = print,
    release_weights: bool = False,
    max_sequence_length: int | None = None,
) -> Manifest:
    from sdrt.export.exporter import ExportError, staged

    if options.optimize or options.deepcache or options.tiny_vae is not None:
        raise ExportError("Chroma exports take no --optimize, --deepcache or --tiny-vae yet")
    out_dir = Path(out_dir)
    length = max_sequence_length or CHROMA_SEQUENCE
    geometry = chroma_geometry(pipeline, length)
    t5_precision = t5_precision_for(options)
    if options.precision == "fp16" and t5_precision == "fp32":
        progress(f"{T5_ENCODER}: kept in fp32 (T5 overflows in fp16 on real weights; --t5-precision fp16 to ask)")
    with staged(out_dir, overwrite) as staging:
        exports = chroma_component_exports(pipeline, geometry)
        components = export_components(
            exports,
            staging,
            geometry,
            lambda name: component_options(options, name, t5_precision),
            progress,
            release_weights,
        )
        write_one_tokenizer_files(pipeline, staging, list(components), TOKENIZER, "ChromaPipeline")
        vae = pipeline.vae.config
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            family=CHROMA_FAMILY,
            prediction_type=FLOW_PREDICTION,
            vae_scaling_factor=float(vae.scaling_factor),
            vae_shift_factor=float(getattr(vae, "shift_factor", None) or 0.0),
            vae_scale_factor=geometry.vae_scale_factor,
            latent_channels=geometry.latent_channels,
            unet_in_channels=geometry.unet_in_channels,
            text_length=geometry.text_length,
            text_hidden_size=geometry.text_hidden_size,
            native_height=NATIVE_LATENT_SIDE * geometry.vae_scale_factor,
            native_width=NATIVE_LATENT_SIDE * geometry.vae_scale_factor,
            dims=flux_dims(geometry, length),
            components=components,
            source=source,
            versions=versions(),
            flux=chroma_spec(length, t5_precision),
        )
        manifest.save(staging)
    return manifest
