"""What the diffusion-transformer exports (sdrt.export.flux_export, sd3_export, chroma_export,
zimage_export, flux2_export) share: the per-component loop (export, validate, record the LoRA
weights map, describe it for the manifest) and the model_index.json of a one-tokenizer folder."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from sdrt.export.weights_map import lora_fingerprints, record_weights_map


def export_components(exports, staging: Path, geometry, options_of, progress, release_weights: bool) -> dict:
    """Component name -> ComponentSpec for each of `exports`, in order. `options_of(name)` is a
    component's own export options (T5 kept in fp32, say); with `release_weights` a module's
    weights are dropped once no later component shares them. Each is traced with its weights
    streamed to disk (sdrt.export.streamed_trace): the transformers and T5 are the largest
    engines sdrt exports."""
    from sdrt.export.component_build import component_spec, export_component, shares_weights

    components = {}
    for index, component in enumerate(exports):
        own = options_of(component.name)
        release = release_weights and not shares_weights(component, exports[index + 1 :])
        prints = lora_fingerprints(component, own)
        final, files, validation = export_component(component, staging, geometry, own, progress, release, streamed=True)
        weights_map = record_weights_map(final, prints, component.name, staging, files, progress)
        components[component.name] = component_spec(component, staging, final, files, validation, own, weights_map)
    return components


def write_one_tokenizer_files(
    pipeline, folder: Path, components: list[str], tokenizer_folder: str, class_name: str, **settings
) -> None:
    """The tokenizer, the scheduler config and model_index.json (`settings`: the pipeline's own
    config values, FLUX.2's is_distilled) of a folder whose engines are `components`."""
    import diffusers

    pipeline.tokenizer.save_pretrained(folder / tokenizer_folder)
    pipeline.scheduler.save_config(folder / "scheduler")
    index = {
        "_class_name": class_name,
        "_diffusers_version": diffusers.__version__,
        **settings,
        **{name: ["diffusers", "OnnxRuntimeModel"] for name in components},
        tokenizer_folder: ["transformers", type(pipeline.tokenizer).__name__],
        "scheduler": ["diffusers", type(pipeline.scheduler).__name__],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def same_options(options) -> Callable[[str], object]:
    """options_of for an export whose components all take the command's options."""
    return lambda name: options
