"""`sdrt export` of a Z-Image pipeline: its engines (sdrt.export.zimage) exported, validated and
written with the manifest (family zimage; the Qwen encoder and tokenizer in the flux section,
whose `t5_precision` holds the text encoder's precision), as sdrt.export.chroma_export does."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from sdrt.export.flux import NATIVE_LATENT_SIDE, flux_dims
from sdrt.export.model_files import versions
from sdrt.export.weights_map import lora_fingerprints, record_weights_map
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


def write_zimage_files(pipeline, folder: Path, components: list[str]) -> None:
    import diffusers

    pipeline.tokenizer.save_pretrained(folder / TOKENIZER)
    pipeline.scheduler.save_config(folder / "scheduler")
    index = {
        "_class_name": "ZImagePipeline",
        "_diffusers_version": diffusers.__version__,
        **{name: ["diffusers", "OnnxRuntimeModel"] for name in components},
        TOKENIZER: ["transformers", type(pipeline.tokenizer).__name__],
        "scheduler": ["diffusers", type(pipeline.scheduler).__name__],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


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
    from sdrt.export.exporter import ExportError, _shares_weights, component_spec, export_component, staged

    if options.optimize or options.deepcache or options.tiny_vae is not None or options.no_t5:
        raise ExportError("Z-Image exports take no --optimize, --deepcache, --tiny-vae or --no-t5 yet")
    out_dir = Path(out_dir)
    length = DEFAULT_MAX_LENGTH
    geometry = zimage_geometry(pipeline, VALIDATION_LATENTS)
    with staged(out_dir, overwrite) as staging:
        components = {}
        exports = zimage_component_exports(pipeline, geometry)
        for index, component in enumerate(exports):
            release = release_weights and not _shares_weights(component, exports[index + 1 :])
            prints = lora_fingerprints(component, options)
            final, files, validation = export_component(component, staging, geometry, options, progress, release)
            weights_map = record_weights_map(final, prints, component.name, staging, files, progress)
            components[component.name] = component_spec(
                component, staging, final, files, validation, options, weights_map
            )
        write_zimage_files(pipeline, staging, list(components))
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
