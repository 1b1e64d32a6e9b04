"""LoRA layers resolved against a model's weights maps, and merged into its pristine weights.

Each requested LoRA's layers are matched to the model's layers by name (sdrt.runtime.features.lora.
weights_map.WeightsMap.resolve: never by guessing from underscores); the deltas of every LoRA
on one layer are summed in fp32 with their weights, mapped to the graph's layout and added to
the weight as exported. Keys that reach no layer are reported; a layer whose shape does not fit
means the LoRA was made for another model, which is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sdrt.runtime.features.lora.files import LoraFile, LoraLayer
from sdrt.runtime.features.lora.weights_map import LoraError, WeightsMap
from sdrt.runtime.manifest import TRANSFORMER, UNET

MAX_NAMED_KEYS = 5  # unmatched keys a warning names
#: The denoisers: a LoRA's UNet weight (A1111's `unet=`) applies to them, its text weight elsewhere.
DENOISERS = (UNET, TRANSFORMER)


@dataclass(frozen=True)
class LoraWeights:
    """How strongly one LoRA applies: to the text encoders and to the denoiser, a UNet or a
    transformer (A1111's te/unet)."""

    text: float = 1.0
    unet: float = 1.0

    def of(self, component: str) -> float:
        return self.unet if component in DENOISERS else self.text


@dataclass
class ResolvedLora:
    file: LoraFile
    layers: dict[str, list[tuple[LoraLayer, str]]] = field(default_factory=dict)  # component -> (layer, module)
    unmatched: list[str] = field(default_factory=list)


#: What a LoRA's denoiser layers tell of the model it was made for.
MADE_FOR = {UNET: "a UNet's (SD 1.x, 2.x, SDXL)", TRANSFORMER: "a diffusion transformer's (FLUX.1, SD3, Chroma)"}


def _component(named: str, maps: dict[str, WeightsMap]) -> str:
    """The component a file's layer is looked up in: kohya's `lora_unet_` and ComfyUI's
    `diffusion_model.` name the denoiser, the transformer of a model without a UNet (Z-Image's
    community LoRAs name its diffusers modules so, as diffusers' Z-Image converter reads them)."""
    return TRANSFORMER if named == UNET and UNET not in maps and TRANSFORMER in maps else named


def resolve(lora: LoraFile, maps: dict[str, WeightsMap], model: str = "") -> ResolvedLora:
    """`model`: the model's family as errors name it ("FLUX.1")."""
    resolved = ResolvedLora(lora, unmatched=list(lora.ignored))
    made_for = f" (it says it was made for {lora.base_model})" if lora.base_model else ""
    this = f"this {model} model" if model else "this model"
    denoisers = [MADE_FOR[c] for c in MADE_FOR if any(layer.component == c for layer in lora.layers)]
    if denoisers and not made_for:
        made_for = f" (its layers are {' and '.join(denoisers)})"
    for layer in lora.layers:
        component = _component(layer.component, maps)
        weights = maps.get(component)
        module = None if weights is None else weights.resolve(layer.name)
        if module is None:
            resolved.unmatched.extend(layer.keys)
            continue
        shape = weights.weights[module].shape
        try:
            layer.delta(shape)
        except ValueError as error:
            raise LoraError(
                f"LoRA {lora.name} does not fit {this}: its layer {layer.name}: {error}; it is "
                f"for another model architecture{made_for}"
            ) from None
        resolved.layers.setdefault(component, []).append((layer, module))
    # A LoRA whose denoiser layers fit none of this model's is for another model, even where
    # its text encoder fits (SD 1.x and FLUX.1 share CLIP-L).
    if not resolved.layers or (denoisers and not any(c in resolved.layers for c in DENOISERS)):
        raise LoraError(
            f"LoRA {lora.name} matches no layer of {this}{made_for}: it is "
            f"for another model architecture (first keys: {', '.join(resolved.unmatched[:3])})"
        )
    return resolved


def unmatched_warning(resolved: ResolvedLora) -> str | None:
    keys = resolved.unmatched
    if not keys:
        return None
    named = ", ".join(keys[:MAX_NAMED_KEYS]) + (", ..." if len(keys) > MAX_NAMED_KEYS else "")
    return f"LoRA {resolved.file.name}: {len(keys)} keys match no layer of this model and were ignored: {named}"


def merged_tensors(
    component: str, uses: list[tuple[ResolvedLora, LoraWeights]], weights: WeightsMap
) -> dict[str, np.ndarray]:
    """Initializer name -> pristine weight + the sum of the LoRAs' deltas, in the graph's
    layout and dtype, for every layer of `component` a LoRA touches."""
    deltas: dict[str, np.ndarray] = {}
    for resolved, strength in uses:
        # A weight past float32's range overflows to inf (no warning printed): the NaN check of
        # the decoded image reports it.
        with np.errstate(over="ignore", invalid="ignore"):
            scale = np.float32(strength.of(component))
            for layer, module in resolved.layers.get(component, ()):
                delta = layer.delta(weights.weights[module].shape) * scale
                deltas[module] = deltas[module] + delta if module in deltas else delta
    merged: dict[str, np.ndarray] = {}
    for module, delta in deltas.items():
        merged.update(weights.merged(weights.weights[module], delta))
    return merged
