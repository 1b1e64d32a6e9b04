"""What flows along a workflow's links. A model, CLIP and VAE are handles on one sdrt Pipeline
(sdrt runs the whole text-encoder + UNet + VAE export); conditioning keeps the text and its
encoder settings until a sampler runs it (sdrt encodes inside its loop); latents and images are
arrays in ComfyUI's layouts (latents [batch, channels, h, w]; images [batch, height, width, 3] in
[0, 1])."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from sdrt.runtime.features.lora.merge import LoraWeights
from sdrt.runtime.features.lora.tags import LoraRef
from sdrt.runtime.regions import Area
from sdrt.runtime.schedulers.kdiffusion.comfy_flow_sigmas import FlowModelSampling


@dataclass(frozen=True)
class TextEncoderFiles:
    """What a CLIP loader (DualCLIPLoader, TripleCLIPLoader, CLIPLoader) loaded: ComfyUI's CLIP
    type, the sdrt family whose export carries those encoders, the files' roles and T5's use."""

    node: str
    clip_type: str
    family: str
    names: tuple[str, ...]
    t5: bool | None = None  # SD3: with T5 (TripleCLIPLoader) or without (DualCLIPLoader); None: the export's


@dataclass(frozen=True)
class ModelHandle:
    """MODEL, CLIP or VAE: the pipeline, the LoRAs applied so far and CLIP's last layer."""

    pipeline: object
    name: str
    loras: tuple[LoraRef, ...] = ()
    clip_skip: int = 1
    #: ModelSamplingFlux / ModelSamplingSD3's patch of a flow model (None: the model's own).
    model_sampling: FlowModelSampling | None = None
    #: A CLIP from ComfyUI's text-encoder files: it runs with the sampler's model (pipeline None).
    encoders: TextEncoderFiles | None = None

    def with_lora(self, name: str, model_weight: float, clip_weight: float) -> ModelHandle:
        ref = LoraRef(name, LoraWeights(text=clip_weight, unet=model_weight))
        return replace(self, loras=(*self.loras, ref))


@dataclass(frozen=True, eq=False)
class Control:
    """One ControlNet applied to a conditioning (ControlNetApply / ControlNetApplyAdvanced): the
    ControlNet's name, the hint IMAGE [batch, height, width, 3], its strength and ComfyUI's
    start/end percents; `to_uncond`: ControlNetApply's, which a negative without ControlNets
    takes too. Compared by identity, as ComfyUI compares its ControlNet objects."""

    name: str
    hint: np.ndarray
    strength: float
    start_percent: float = 0.0
    end_percent: float = 1.0
    to_uncond: bool = False


@dataclass(frozen=True)
class Region:
    """What ComfyUI's conditioning nodes set on an entry (sdrt.serve.comfy.conditioning_nodes):
    its area, strength and timestep range (None: unset)."""

    area: Area | None = None
    strength: float = 1.0
    start_percent: float | None = None
    end_percent: float | None = None
    mask: np.ndarray | None = field(default=None, compare=False)  # ConditioningSetMask's [batch, h, w]
    mask_strength: float = 1.0
    mask_bounds: bool = False


@dataclass(frozen=True)
class Conditioning:
    """CONDITIONING: the prompt text as CLIPTextEncode received it, the CLIP it went through and
    the ControlNets applied to it, in order; ComfyUI's list of such entries is this one and the
    `combined` after it (ConditioningCombine), each with its region."""

    text: str
    clip: ModelHandle
    guidance: float | None = None  # FluxGuidance's (None: ComfyUI's FLUX default)
    controls: tuple[Control, ...] = ()
    region: Region = Region()
    combined: tuple[Conditioning, ...] = ()

    @property
    def entries(self) -> tuple[Conditioning, ...]:
        """ComfyUI's list: this entry (without the others) and the combined ones."""
        return (replace(self, combined=()), *self.combined) if self.combined else (self,)


@dataclass
class Latent:
    """LATENT: `samples` [batch, channels, h, w]; EmptyLatentImage's are zeros (ComfyUI's), which
    a sampler at full denoise replaces by noise alone. The nodes that change a latent keep its
    other entries (ComfyUI's `samples.copy()`): `dataclasses.replace`."""

    samples: np.ndarray
    empty: bool = False
    noise_mask: np.ndarray | None = None  # SetLatentNoiseMask's [batch or 1, 1, height, width]: 1 repaints
    #: Each image's index in the batch its noise is drawn for (LatentFromBatch, RepeatLatentBatch);
    #: None: the latent's own order. Kept by the nodes that copy a latent, as ComfyUI's dict copies.
    batch_index: tuple[int, ...] | None = None
