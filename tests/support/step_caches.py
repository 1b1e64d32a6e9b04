"""The tiny FLUX.1 export with the transformer also in parts (what `sdrt export --cache-graphs`
adds): the three parts exported into a copy of the plain export, so the session pays for them
alone (sdrt.export.flux_cache; the whole export with the option runs in the slow tier)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path


def add_cache_graphs(source: Path, export: Path, folder: Path) -> Path:
    """`export` (of the diffusers folder `source`) copied to `folder`, with the parts."""
    from diffusers import FluxPipeline

    from sdrt.export.dit_export import export_components, same_options
    from sdrt.export.exporter import ExportOptions
    from sdrt.export.flux import flux_component_exports, flux_geometry
    from sdrt.export.flux_cache import flux_cache_exports
    from sdrt.runtime.manifest import CACHE_GRAPHS, Manifest

    shutil.copytree(export, folder)
    manifest = Manifest.load(folder)
    pipeline = FluxPipeline.from_pretrained(source)
    geometry = flux_geometry(pipeline)
    exports = flux_cache_exports(
        flux_component_exports(pipeline, geometry, manifest.flux.max_sequence_length), pipeline
    )
    parts = [component for component in exports if component.name in CACHE_GRAPHS]
    added = export_components(parts, folder, geometry, same_options(ExportOptions()), lambda line: None, False)
    dataclasses.replace(manifest, components={**manifest.components, **added}).save(folder)
    return folder
