"""What a model family is: how an export of it is driven by the one denoising loop.

A family says which text encoders its export holds and how their outputs become the
denoiser's conditioning feeds, which component denoises and the tensor names of one call, its
latent format (channels, VAE scaling and shift, the image-to-latent factor), its default
sampler (checked against the export at load), the features it supports (sdrt.runtime.features.combinations) and the
request settings only it takes. Each family is a module of this package, registered once in
`sdrt.runtime.families` (the single source of family names).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from sdrt.errors import GenerationError
from sdrt.runtime.manifest import (
    CLIP_TEXT_ENCODER,
    CLIP_TOKENIZER,
    DENOISER_OUTPUT,
    DENOISER_SAMPLE,
    DENOISER_TIMESTEP,
    LAST_HIDDEN,
    UNET,
    UNET_CONTEXT,
    Manifest,
)
from sdrt.runtime.schedulers import DEFAULT_SAMPLER
from sdrt.runtime.schedulers.spaces import DIFFUSION

if TYPE_CHECKING:
    from sdrt.runtime.engines import Engine
    from sdrt.runtime.request import GenerationRequest
    from sdrt.runtime.request_resolve import ResolvedRequest
    from sdrt.runtime.text.encoders import TextEncoding

#: Per-row feeds besides the text that stay constant through a run, for negative and positive rows.
RowFeeds = dict[str, dict[str, np.ndarray]]


@dataclass(frozen=True)
class LatentFormat:
    """The latent space a family's VAE and denoiser share, with the constants from the export."""

    channels: int
    vae_scale_factor: int  # image side / latent side
    scaling_factor: float
    shift_factor: float

    @classmethod
    def of(cls, manifest: Manifest) -> LatentFormat:
        return cls(
            manifest.latent_channels, manifest.vae_scale_factor, manifest.vae_scaling_factor, manifest.vae_shift_factor
        )

    def shape(self, batch: int, height: int, width: int) -> tuple[int, int, int, int]:
        """The latents of `batch` images of this size."""
        return batch, self.channels, height // self.vae_scale_factor, width // self.vae_scale_factor


@dataclass(frozen=True)
class DenoiserCall:
    """The denoiser's component and the tensor names of one call (the rest are conditioning feeds)."""

    component: str = UNET
    sample: str = DENOISER_SAMPLE
    timestep: str = DENOISER_TIMESTEP
    output: str = DENOISER_OUTPUT


class Family:
    """A model family; subclasses set the class attributes and override what differs."""

    name: ClassVar[str]
    display_name: ClassVar[str]
    denoiser: ClassVar[DenoiserCall] = DenoiserCall()
    #: The text encoders' output that conditions the denoiser (clip skip reads other layers).
    hidden_output: ClassVar[str] = LAST_HIDDEN
    #: The conditioning feed whose length is the text's sequence (rows of equal length share a call).
    text_sequence_feed: ClassVar[str] = UNET_CONTEXT
    #: A1111 applies clip skip to SD 1.x only (SD 2.x and SDXL ignore it; docs/prompts.md).
    clip_skip_applies: ClassVar[bool] = False
    #: Request fields only this family takes (others refuse them, naming the family).
    own_settings: ClassVar[tuple[str, ...]] = ()
    #: The features a request may use on this family (names in sdrt.runtime.features.combinations).
    features: ClassVar[frozenset[str]] = frozenset()
    #: The sampler space of the denoiser (sdrt.runtime.schedulers.spaces): which samplers it takes.
    sampler_space: ClassVar[str] = DIFFUSION
    #: The sampler the export's scheduler config is checked with at load.
    default_sampler: ClassVar[str] = DEFAULT_SAMPLER
    #: The guidance scale a command uses when none is given (None: GenerationRequest's default).
    default_guidance: ClassVar[float | None] = None
    #: The families whose latents this one can finish as a refiner (sdrt.runtime.features.refiner).
    refines: ClassVar[frozenset[str]] = frozenset()
    #: Whether `sdrt export` writes this family (manifest.schema.json lists those).
    exported: ClassVar[bool] = True
    #: Families whose exports a ControlNet trained for this one fits.
    controlnet_family: ClassVar[str | None] = None
    #: The components a LoRA can change, with a weights map in the export (sdrt.runtime.features.lora).
    lora_components: ClassVar[tuple[str, ...]] = (UNET, CLIP_TEXT_ENCODER, "text_encoder_2")
    #: Whose BFL layer names a kohya / ai-toolkit LoRA of this family uses (the tables of
    #: sdrt.runtime.features.lora.flux2_formats.BFL_LAYOUTS); FLUX.1's unless the family differs.
    lora_bfl_layout: ClassVar[str] = "flux1"

    def text_encoders(self, manifest: Manifest) -> list[tuple[str, str]]:
        """(text encoder component, tokenizer folder) pairs, in concatenation order."""
        return [(CLIP_TEXT_ENCODER, CLIP_TOKENIZER)]

    def text_feeds(self, encoding: TextEncoding) -> dict[str, np.ndarray]:
        """The denoiser's feeds of one encoded text."""
        return {UNET_CONTEXT: encoding.hidden}

    def load_text_encoders(self, folder, manifest: Manifest, embeddings):
        """The export's text encoders with their tokenizers (sdrt.runtime.text.encoders)."""
        from sdrt.runtime.text.encoders import TextEncoders

        return TextEncoders.load(folder, manifest, embeddings)

    def cfg_scale(self, request: GenerationRequest) -> float:
        """The classifier-free guidance scale (guided when > 1): the request's guidance scale."""
        return request.guidance_scale

    def default_size(
        self, request: GenerationRequest, manifest: Manifest, height: int | None, width: int | None
    ) -> tuple[int | None, int | None]:
        """A request's height and width where it gives none, before the export's native size
        (FLUX.2 takes its first reference image's); by default left as they are."""
        return height, width

    def output_size(self, request: GenerationRequest, manifest: Manifest, height: int, width: int) -> tuple[int, int]:
        """The output's size from the request's (FLUX.1 Kontext's follows its max_area); by default as it is."""
        return height, width

    def reference_tokens(self, manifest: Manifest, image_tokens: tuple[int, int, int]) -> tuple[int, int, int]:
        """The (min, opt, max) tokens of reference images a denoiser call carries beside the
        generated image's, whose own are `image_tokens`: what a TensorRT profile's image-token
        range adds (sdrt.runtime.engines.tensorrt.profiles). None for a family that edits no reference."""
        return 0, 0, 0

    def export_cfg_scale(self, request: GenerationRequest, manifest: Manifest) -> float:
        """The CFG scale a request runs with on this export (ResolvedRequest.cfg_scale): the
        family's cfg_scale, unless the export says more (FLUX.2's distilled models)."""
        return self.cfg_scale(request)

    def guider(self, engine: Engine, resolved: ResolvedRequest, warnings: list[str]):
        """The request's guider on this denoiser (sdrt.runtime.loop.guiders)."""
        from sdrt.runtime.loop.guiders import guider_for

        return guider_for(engine, resolved.request, resolved.guided, warnings)

    def step_hooks(self, pipeline, resolved: ResolvedRequest) -> list:
        """The family's own step hooks for a request (sdrt.runtime.loop.hooks; FLUX.2's
        reference images); none by default."""
        return []

    def make_denoiser(self, engine: Engine):
        """The loop's denoiser on the family's engine (sdrt.runtime.loop.denoiser)."""
        from sdrt.runtime.loop.denoiser import EngineDenoiser

        return EngineDenoiser(engine, self.denoiser)

    def set_timesteps(self, sampler, steps: int, manifest: Manifest, resolved: ResolvedRequest | None) -> None:
        """The sampler's tables for a request of `steps` steps."""
        sampler.set_timesteps(steps)

    def skipped_steps(self, steps: int, strength: float) -> int:
        """The steps image-to-image skips at this strength (StableDiffusionImg2ImgPipeline's
        get_timesteps: the kept steps rounded down)."""
        return steps - min(int(steps * strength), steps)

    def zero_negative(self, manifest: Manifest, request: GenerationRequest) -> bool:
        """Whether the negative rows get zeros instead of an encoded negative prompt."""
        return False

    def row_feeds(self, manifest: Manifest, resolved: ResolvedRequest) -> RowFeeds:
        """Per-row feeds besides the text (SDXL's size conditioning)."""
        return {"negative": {}, "positive": {}}

    def inpainting_denoiser(self, manifest: Manifest) -> bool:
        """A denoiser that takes the mask and masked image's latents as extra input channels."""
        return manifest.unet_in_channels != manifest.latent_channels

    def distilled_guidance(self, manifest: Manifest) -> bool:
        """Whether the guidance scale is a distilled model's guidance input, not CFG (Forge's
        `Distilled CFG Scale` in PNG parameters)."""
        return False

    def takes_strength(self, manifest: Manifest) -> bool:
        """Whether an input image is a start noised by `strength` (not FLUX.1 Kontext's reference)."""
        return True

    def own_mode(self, manifest: Manifest, resolved: ResolvedRequest):
        """The family's own start of a run for this request (a sdrt.runtime.loop.modes.Mode: FLUX.1
        Fill's, Kontext's), or None: the loop's text-to-image, image-to-image or inpainting."""
        return None

    def check_request(self, request: GenerationRequest, manifest: Manifest) -> None:
        """What only some families take: other families' settings are refused by name."""
        from sdrt.runtime.families import FAMILIES

        for family in FAMILIES.values():
            for name in family.own_settings:
                if name not in self.own_settings and getattr(request, name) is not None:
                    raise GenerationError(
                        f"{name} applies to {family.display_name} models only; this is {manifest.family}", name
                    )

    def guidance_default(self, manifest: Manifest) -> float | None:
        """The guidance scale a command or server uses for this export when none is given (a
        variant of the family may have its own pipeline default: FLUX.1 Fill)."""
        return self.default_guidance

    def check_manifest(self, manifest: Manifest) -> str | None:
        """What is wrong with an export that names this family, or None."""
        return None
