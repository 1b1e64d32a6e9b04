"""`sdrt export` of a FLUX.2 [klein] pipeline: the Qwen3 encoder (sdrt.export.qwen_encoder, at
the pipeline's hidden-state layers), the transformer and the VAE (sdrt.export.flux2) exported,
validated and written with the manifest (family flux2, its settings in the flux2 section), as
sdrt.export.chroma_export does for Chroma."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

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
from sdrt.export.weights_map import lora_fingerprints, record_weights_map
from sdrt.runtime.flux2_spec import Flux2Spec
from sdrt.runtime.manifest import FORMAT_VERSION, DimRange, Manifest
from sdrt.runtime.schedulers.spaces import FLOW_PREDICTION
from sdrt.runtime.text.qwen_encoder import QWEN_SEQUENCE


def write_flux2_files(pipeline, folder: Path, components: list[str]) -> None:
    import diffusers

    pipeline.tokenizer.save_pretrained(folder / TOKENIZER)
    pipeline.scheduler.save_config(folder / "scheduler")
    index = {
        "_class_name": type(pipeline).__name__,
        "_diffusers_version": diffusers.__version__,
        "is_distilled": bool(pipeline.config.is_distilled),
        **{name: ["diffusers", "OnnxRuntimeModel"] for name in components},
        TOKENIZER: ["transformers", type(pipeline.tokenizer).__name__],
        "scheduler": ["diffusers", type(pipeline.scheduler).__name__],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


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
    from sdrt.export.exporter import ExportError, _shares_weights, component_spec, export_component, staged

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
        components = {}
        exports = [
            qwen_encoder_export(pipeline.text_encoder, TEXT_ENCODER, indices),
            flux2_transformer_export(pipeline),
            *flux2_vae_exports(pipeline, geometry),
        ]
        for index, component in enumerate(exports):
            release = release_weights and not _shares_weights(component, exports[index + 1 :])
            prints = lora_fingerprints(component, options)
            final, files, validation = export_component(component, staging, geometry, options, progress, release)
            weights_map = record_weights_map(final, prints, component.name, staging, files, progress)
            components[component.name] = component_spec(
                component, staging, final, files, validation, options, weights_map
            )
        write_flux2_files(pipeline, staging, list(components))
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
