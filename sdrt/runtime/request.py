"""A generation request as one typed value, validated once against the model's manifest.

The CLI, `Pipeline.generate`, both server APIs and the batcher all build a `GenerationRequest`;
`resolve(manifest)` checks every field and fills in the defaults that depend on the model
(native size, the mode's strength, a drawn seed), then what combines with what, once
(sdrt.runtime.features.combinations). Every error a request can cause is a
`GenerationError` whose `param` names the field, so the HTTP layer maps it to its own field
name instead of reading the message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from sdrt.errors import GenerationError as GenerationError  # where callers read it
from sdrt.runtime.a1111_noise import A1111Noise
from sdrt.runtime.families.sdxl import SizeConditioning
from sdrt.runtime.features.controlnet.units import ControlUnit
from sdrt.runtime.features.deepcache import DeepCache
from sdrt.runtime.features.hires import HiresFix
from sdrt.runtime.features.inpaint_area import MaskOptions
from sdrt.runtime.features.lora.tags import LoraRef
from sdrt.runtime.features.skip_layers import SkipLayerGuidance
from sdrt.runtime.features.step_caches import StepCache
from sdrt.runtime.manifest import Manifest
from sdrt.runtime.regions import ConditioningEntries
from sdrt.runtime.request_fields import ALONE, PER_ROW, SHARED
from sdrt.runtime.request_sizes import check_size, nearest_multiples, side_problem  # noqa: F401 (read from here)
from sdrt.runtime.sampler_settings import SamplerSettings
from sdrt.runtime.schedulers import DEFAULT_SAMPLER, DEFAULT_SCHEDULE
from sdrt.runtime.schedulers.kdiffusion.comfy_schedules import KSamplerSteps
from sdrt.runtime.seeds import MAX_SEED as MAX_SEED  # where callers read it
from sdrt.runtime.text.prompts.emphasis import DEFAULT_EMPHASIS

if TYPE_CHECKING:
    from sdrt.runtime.request_resolve import ResolvedRequest

DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 7.5
#: The largest guidance scale float32 holds (the loop's arithmetic); a larger one is not a scale.
MAX_GUIDANCE = float(np.finfo(np.float32).max)
# diffusers' default strengths: image-to-image keeps some of the image, inpainting repaints fully.
IMG2IMG_STRENGTH = 0.8
INPAINT_STRENGTH = 1.0
#: A1111's range for CLIP_stop_at_last_layers (the model's layer count is checked at encoding).
MAX_CLIP_SKIP = 12


@dataclass(frozen=True)
class GenerationRequest:
    """What one generate() call is asked for. `prompt` may be a list (one image set each);
    `seed` may then be a list with one seed per prompt (text-to-image); `seeds` gives each image
    its own (the images of one prompt then do not share one generator). `init_image` makes it
    image-to-image, with `mask_image` too inpainting. `latents` replaces the seeded noise.
    SDXL only: `size_conditioning` (sdrt.runtime.families.sdxl), and `refiner_switch` in (0, 1), the
    fraction of the noise schedule after which a loaded refiner takes over (diffusers'
    denoising_end / denoising_start). Prompts are read in A1111's prompt language
    (sdrt.runtime.text.prompts) with an `emphasis` mode and A1111's `clip_skip`; `plain_prompt`
    reads them as plain text (no emphasis, BREAK, editing or alternation). `loras`: LoRAs
    (sdrt.runtime.features.lora.tags.LoraRef, or "PATH[:WEIGHT]"), besides the prompt's `<lora:...>` tags.
    `controlnets`: ControlNets with their control images (sdrt.runtime.features.controlnet.units)."""

    # Each field's metadata says how it batches in a server (sdrt.runtime.request_fields).
    prompt: str | Sequence[str] = field(metadata=PER_ROW)
    negative_prompt: str | Sequence[str] | None = field(default=None, metadata=PER_ROW)
    steps: int = field(default=DEFAULT_STEPS, metadata=SHARED)
    guidance_scale: float = field(default=DEFAULT_GUIDANCE, metadata=SHARED)
    height: int | None = field(default=None, metadata=SHARED)
    width: int | None = field(default=None, metadata=SHARED)
    seed: int | Sequence[int] | None = field(default=None, metadata=PER_ROW)
    # One seed per image (prompt by prompt), instead of `seed`: each image equals a request for its
    # prompt with that seed alone (A1111's seed + i: consecutive_seeds).
    seeds: Sequence[int] | None = field(default=None, metadata=PER_ROW)
    num_images: int = field(default=1, metadata=SHARED)
    sampler: str = field(default=DEFAULT_SAMPLER, metadata=SHARED)
    # How the sampler spaces its noise levels (schedulers.schedules).
    schedule: str = field(default=DEFAULT_SCHEDULE, metadata=SHARED)
    # bytes: an encoded image file.
    init_image: str | Path | bytes | Image.Image | None = field(default=None, metadata=ALONE)
    mask_image: str | Path | bytes | Image.Image | None = field(default=None, metadata=ALONE)
    # A1111's mask handling (sdrt.runtime.features.inpaint_area); read only with a mask image.
    mask_options: MaskOptions | None = field(default=None, metadata=SHARED)
    # Image-to-image from latents (diffusers' img2img given latents as its image): [1 or batch, C, h, w].
    init_latents: np.ndarray | None = field(default=None, compare=False, metadata=ALONE)
    hires: HiresFix | None = field(default=None, metadata=ALONE)  # A1111's hires fix (sdrt.runtime.features.hires)
    deepcache: DeepCache | None = field(default=None, metadata=SHARED)  # step caching (sdrt.runtime.features.deepcache)
    # The transformer families' step cache (sdrt.runtime.features.step_caches). Alone: the
    # first-block cache decides over all of a branch's rows, so batching would change its steps.
    cache: StepCache | None = field(default=None, metadata=ALONE)
    # The stochasticity of samplers that take one (TCD's gamma); None: theirs.
    eta: float | None = field(default=None, metadata=SHARED)
    strength: float | None = field(default=None, metadata=SHARED)  # read only from an image or init latents
    # A1111's img2img_fix_steps (k-diffusion samplers): from an image, all `steps` run (of steps / strength).
    img2img_fix_steps: bool = field(default=False, metadata=SHARED)
    # A1111's always_discard_next_to_last_sigma (its samplers): one step more laid out, the next-to-last dropped.
    discard_penultimate_sigma: bool = field(default=False, metadata=SHARED)
    # A1111's sampler settings (sgm_noise_multiplier, eta, churn, schedule range: sdrt.runtime.sampler_settings).
    sampler_settings: SamplerSettings = field(default=SamplerSettings(), metadata=SHARED)
    # A1111's noise: variation seeds, seed resize, ENSD, randn_source (sdrt.runtime.a1111_noise).
    a1111_noise: A1111Noise | None = field(default=None, metadata=ALONE)
    latents: np.ndarray | None = field(default=None, compare=False, metadata=ALONE)
    size_conditioning: SizeConditioning | None = field(default=None, metadata=SHARED)
    refiner_switch: float | None = field(default=None, metadata=SHARED)
    # FLUX.1 only: real classifier-free guidance with a negative prompt (guidance_scale is then
    # a guidance-distilled model's embedded guidance).
    true_cfg_scale: float | None = field(default=None, metadata=SHARED)
    # FLUX.1 Kontext only (sdrt.runtime.families.flux_kontext_sizes): the reference resized to the
    # nearest preferred resolution (None: on, as FluxKontextPipeline's _auto_resize), and the
    # output's area in pixels (None: the pipeline's max_area, 1024 ** 2).
    kontext_auto_resize: bool | None = field(default=None, metadata=SHARED)
    kontext_max_area: int | None = field(default=None, metadata=SHARED)
    # FLUX.2 [klein] only: images to edit from (sdrt.runtime.features.references).
    reference_images: Sequence[str | Path | bytes | Image.Image] | None = field(default=None, metadata=ALONE)
    # Z-Image only (sdrt.runtime.families.zimage_guidance): ZImagePipeline's CFG truncation and
    # normalization; None: the pipeline's defaults (no truncation, no normalization).
    cfg_truncation: float | None = field(default=None, metadata=SHARED)
    cfg_normalization: float | None = field(default=None, metadata=SHARED)
    # Stable Diffusion 3 only: skip-layer guidance (sdrt.runtime.features.skip_layers).
    skip_layer_guidance: SkipLayerGuidance | None = field(default=None, metadata=SHARED)
    t5: bool | None = field(default=None, metadata=SHARED)  # SD3: False runs without T5 (its zeros); None: as exported
    # SD3: T5's token length (StableDiffusion3Pipeline's max_sequence_length); None: the export's (256).
    max_sequence_length: int | None = field(default=None, metadata=SHARED)
    emphasis: str = field(default=DEFAULT_EMPHASIS, metadata=SHARED)
    clip_skip: int = field(default=1, metadata=SHARED)
    plain_prompt: bool = field(default=False, metadata=SHARED)
    loras: Sequence[LoraRef | str] = field(default=(), metadata=SHARED)
    controlnets: Sequence[ControlUnit] = field(default=(), metadata=ALONE)
    #: The LoRA and ControlNet names come from a client (servers set it): each finds a file of its
    #: folder (--lora-dir, --controlnet-dir) only, never a path, and errors show no server path.
    confined_names: bool = field(default=False, metadata=SHARED)
    vae: str = field(default="full", metadata=SHARED)  # the decoder: "full", or "tiny" (an export with --tiny-vae)
    # ComfyUI's samplers (comfy_*) only: its KSampler's denoise, start/end steps, noise and seed.
    ksampler_steps: KSamplerSteps | None = field(default=None, metadata=SHARED)
    conditionings: ConditioningEntries | None = field(default=None, metadata=ALONE)  # ComfyUI's lists (regions.py)

    def resolve(self, manifest: Manifest) -> ResolvedRequest:
        """Every field checked against the model; defaults filled in; images opened
        (sdrt.runtime.request_resolve)."""
        from sdrt.runtime.request_resolve import resolve_request

        return resolve_request(self, manifest)
