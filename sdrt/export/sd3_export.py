"""`sdrt export` of a Stable Diffusion 3 / 3.5 pipeline: its engines (sdrt.export.sd3) exported,
validated and written with the manifest, as sdrt.export.flux_export does for FLUX.1. Without
T5 (`--no-t5`, or a pipeline loaded with text_encoder_3 None) the export has no text_encoder_3
and the runtime feeds zeros in its place."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sdrt.export.dit_export import export_components
from sdrt.export.flux import component_options
from sdrt.export.flux_export import t5_precision_for
from sdrt.export.model_files import versions
from sdrt.export.sd3 import (
    DEFAULT_SEQUENCE,
    T5_ENCODER,
    native_latent_side,
    sd3_component_exports,
    sd3_dims,
    sd3_geometry,
    sd3_spec,
    write_sd3_files,
)
from sdrt.runtime.manifest import FORMAT_VERSION, Manifest
from sdrt.runtime.schedulers.spaces import FLOW_PREDICTION

SD3_FAMILY = "sd3"


def export_sd3_pipeline(
    pipeline,
    out_dir: str | Path,
    *,
    source: dict,
    options,
    overwrite: bool = False,
    progress: Callable[[str], None] = print,
    release_weights: bool = False,
    max_sequence_length: int = DEFAULT_SEQUENCE,
) -> Manifest:
    from sdrt.export.exporter import ExportError, staged

    if options.optimize or options.deepcache or options.tiny_vae is not None:
        raise ExportError("SD3 exports take no --optimize, --deepcache or --tiny-vae yet")
    with_t5 = getattr(pipeline, T5_ENCODER, None) is not None and not options.no_t5
    if not with_t5:
        progress(f"{T5_ENCODER}: not exported (the runtime feeds zeros in T5's place, as diffusers without it)")
    out_dir = Path(out_dir)
    geometry = sd3_geometry(pipeline)
    t5_precision = t5_precision_for(options)
    with staged(out_dir, overwrite) as staging:
        exports = sd3_component_exports(pipeline, geometry, with_t5)
        components = export_components(
            exports,
            staging,
            geometry,
            lambda name: component_options(options, name, t5_precision),
            progress,
            release_weights,
        )
        write_sd3_files(pipeline, staging, list(components), with_t5)
        vae = pipeline.vae.config
        native = native_latent_side(pipeline) * geometry.vae_scale_factor
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            family=SD3_FAMILY,
            prediction_type=FLOW_PREDICTION,
            vae_scaling_factor=float(vae.scaling_factor),
            vae_shift_factor=float(getattr(vae, "shift_factor", None) or 0.0),
            vae_scale_factor=geometry.vae_scale_factor,
            latent_channels=geometry.latent_channels,
            unet_in_channels=geometry.unet_in_channels,
            text_length=geometry.text_length,
            text_hidden_size=geometry.text_hidden_size,
            native_height=native,
            native_width=native,
            dims=sd3_dims(pipeline, geometry, max_sequence_length),
            components=components,
            source=source,
            versions=versions(),
            sd3=sd3_spec(pipeline, with_t5, max_sequence_length, t5_precision),
        )
        manifest.save(staging)
    return manifest
