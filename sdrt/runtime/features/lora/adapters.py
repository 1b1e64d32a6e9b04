"""A pipeline's LoRAs: per request, the engines with the request's LoRAs merged in.

`LoraAdapters.use(refs, warnings)` reads the named LoRAs (sdrt.runtime.features.lora.library), resolves
them against the export's weights maps (sdrt.runtime.features.lora.merge), and enters, for each
component they touch, the backend's engine for that weight set (sdrt.runtime.features.lora.variants).
A LoRA with weight 0 is left out, so it gives exactly the base image. The weights maps and
the variant caches are made on the first request with a LoRA.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from sdrt.runtime.features.lora.flux2_formats import BFL_LAYOUTS
from sdrt.runtime.features.lora.library import LoraLibrary
from sdrt.runtime.features.lora.merge import LoraWeights, ResolvedLora, merged_tensors, resolve, unmatched_warning
from sdrt.runtime.features.lora.tags import LoraRef
from sdrt.runtime.features.lora.weights_map import LoraError, WeightsMap
from sdrt.runtime.manifest import Manifest


@dataclass(frozen=True)
class UsedLora:
    name: str
    short_hash: str
    weights: LoraWeights


class LoraAdapters:
    def __init__(
        self,
        folder: Path,
        manifest: Manifest,
        engines: dict,
        variants: Callable[[str, WeightsMap], object],
        library: LoraLibrary,
    ):
        self.folder = folder
        self.manifest = manifest
        self.engines = engines
        self.library = library
        self._make_variants = variants
        self._maps: dict[str, WeightsMap] | None = None
        self._variants: dict[str, object] = {}
        self._resolved: dict[tuple, ResolvedLora] = {}
        self._lock = threading.Lock()

    def weights_maps(self) -> dict[str, WeightsMap]:
        with self._lock:
            if self._maps is None:
                adaptable = self.manifest.model_family.lora_components
                names = [name for name in adaptable if name in self.manifest.components]
                self._maps = {
                    name: WeightsMap.load(self.folder, name, self.manifest.components[name]) for name in names
                }
            return self._maps

    def variants(self, component: str):
        with self._lock:
            if component not in self._variants:
                self._variants[component] = self._make_variants(component, self._maps[component])
            return self._variants[component]

    def _resolve(self, ref: LoraRef, confined: bool) -> ResolvedLora:
        lora = self.library.read(ref.source, confined, BFL_LAYOUTS[self.manifest.model_family.lora_bfl_layout])
        key = (lora.sha256, str(lora.path))
        if key not in self._resolved:
            self._resolved[key] = resolve(lora, self.weights_maps(), self.manifest.model_family.display_name)
        return self._resolved[key]

    @contextlib.contextmanager
    def use(
        self, refs: Sequence[LoraRef], warnings: list[str], confined: bool = False
    ) -> Iterator[tuple[dict, list[UsedLora]]]:
        """(the engines by component with the LoRAs merged, the LoRAs used); `confined`: the
        names are a client's (sdrt.runtime.features.lora.library)."""
        active = [ref for ref in refs if ref.weights != LoraWeights(0.0, 0.0)]
        if not active and not self._variants:
            yield self.engines, []
            return
        uses = [(self._resolve(ref, confined), ref.weights) for ref in active]
        names = [resolved.file.sha256 for resolved, _ in uses]
        if len(set(names)) != len(names):
            raise LoraError("a LoRA is named twice in one request; name it once with the weight you want")
        for resolved, _ in uses:
            if (warning := unmatched_warning(resolved)) is not None:
                warnings.append(warning)
        maps = self.weights_maps()
        engines = dict(self.engines)
        with contextlib.ExitStack() as stack:
            for component, weights in maps.items():
                touching = [
                    (resolved, strength)
                    for resolved, strength in uses
                    if component in resolved.layers and strength.of(component) != 0
                ]
                key = tuple((resolved.file.sha256, strength.of(component)) for resolved, strength in touching)
                # A component with variants goes through them even for the base weights: a
                # refitted engine must be given its pristine weights back.
                if component not in self.engines or not key and component not in self._variants:
                    continue

                def tensors(c=component, t=touching, w=weights):
                    return merged_tensors(c, t, w)

                engines[component] = stack.enter_context(self.variants(component).engine(key, tensors))
            yield engines, [UsedLora(r.file.name, r.file.short_hash, w) for r, w in uses]
