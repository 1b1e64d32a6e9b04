"""`sdrt export` of a FLUX.1 pipeline: its engines (sdrt.export.flux) exported, validated and
written with the manifest, as export_pipeline does for the UNet families. Each module's weights
are released once traced (`release_weights`), so at most one engine's PyTorch weights and its
ONNX copy are in memory at a time (docs/flux.md gives the figures for the full model)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sdrt.export.dit_export import export_components
from sdrt.export.flux import (
    NATIVE_LATENT_SIDE,
    T5_ENCODER,
    component_options,
    default_sequence_length,
    flux_component_exports,
    flux_dims,
    flux_geometry,
    flux_spec,
    is_kontext,
    write_flux_files,
)
from sdrt.export.model_files import versions
from sdrt.runtime.manifest import FORMAT_VERSION, Manifest
from sdrt.runtime.schedulers.spaces import FLOW_PREDICTION

FLUX_FAMILY = "flux"


def t5_precision_for(options) -> str:
    """T5 overflows in fp16 on real weights: fp32 unless the options ask for it explicitly."""
    return options.t5_precision or "fp32"


def export_flux_pipeline(
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
        raise ExportError("FLUX exports take no --optimize, --deepcache or --tiny-vae yet (docs/flux.md)")
    out_dir = Path(out_dir)
    geometry = flux_geometry(pipeline)
    length = max_sequence_length or default_sequence_length(pipeline)
    t5_precision = t5_precision_for(options)
    if options.precision == "fp16" and t5_precision == "fp32":
        progress(f"{T5_ENCODER}: kept in fp32 (T5 overflows in fp16 on real weights; --t5-precision fp16 to ask)")
    with staged(out_dir, overwrite) as staging:
        exports = flux_component_exports(pipeline, geometry, length)
        if options.cache_graphs:
            from sdrt.export.flux_cache import flux_cache_exports

            exports = flux_cache_exports(exports, pipeline)
        components = export_components(
            exports,
            staging,
            geometry,
            lambda name: component_options(options, name, t5_precision),
            progress,
            release_weights,
        )
        write_flux_files(pipeline, staging, list(components))
        vae = pipeline.vae.config
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            family=FLUX_FAMILY,
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
            dims=flux_dims(geometry, length, is_kontext(pipeline)),
            components=components,
            source=source,
            versions=versions(),
            flux=flux_spec(pipeline, length, t5_precision),
        )
        manifest.save(staging)
    return manifest
