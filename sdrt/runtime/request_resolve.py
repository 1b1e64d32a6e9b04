"""A `GenerationRequest` resolved against a model's manifest (`GenerationRequest.resolve`): every
field checked, the defaults that depend on the model filled in (native size, the mode's strength,
a drawn seed), images opened, LoRA tags read from the prompts, and what combines with what checked
once (sdrt.runtime.features.combinations)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

from sdrt.errors import GenerationError
from sdrt.runtime.a1111_noise import A1111Noise
from sdrt.runtime.features.combinations import check_combinations
from sdrt.runtime.features.controlnet.units import PARAM as CONTROLNETS
from sdrt.runtime.features.controlnet.units import ControlUnit, check_units
from sdrt.runtime.features.lora.tags import LoraRef, extract_tags, weights_problem
from sdrt.runtime.features.lora.weights_map import LoraError
from sdrt.runtime.imaging.inputs import InputImageError, open_image, target_size
from sdrt.runtime.manifest import BATCH, HEIGHT, Manifest
from sdrt.runtime.request import (
    IMG2IMG_STRENGTH,
    INPAINT_STRENGTH,
    MAX_CLIP_SKIP,
    MAX_GUIDANCE,
    GenerationRequest,
)
from sdrt.runtime.request_checks import (
    check_cache,
    check_counts,
    check_deepcache,
    check_sampling,
    check_vae,
    latent_size,
)
from sdrt.runtime.request_sizes import check_size, nearest_multiples, side_problem  # noqa: F401 (read from here)
from sdrt.runtime.schedulers import DEFAULT_SAMPLER, SAMPLERS
from sdrt.runtime.seeds import MAX_SEED as MAX_SEED  # where callers read it
from sdrt.runtime.seeds import image_seeds, request_seeds
from sdrt.runtime.text.checks import check_text
from sdrt.runtime.text.prompts.emphasis import COMFYUI_EMPHASIS, emphasis_mode
from sdrt.runtime.text.prompts.options import TextOptions


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass(frozen=True)
class ResolvedRequest:
    """A checked request: lists where the request allowed one value or many."""

    request: GenerationRequest
    prompts: list[str]
    negatives: list[str]
    seeds: list[int]  # one per prompt (per_prompt_seeds), per image (per_image_seeds), or one for all
    per_prompt_seeds: bool
    height: int
    width: int
    strength: float | None
    image: Image.Image | None
    mask: Image.Image | None
    text_options: TextOptions = TextOptions()
    texts: list[str] = field(default_factory=list)  # the prompts as encoded: without LoRA tags
    loras: tuple[LoraRef, ...] = ()
    controls: tuple[tuple[ControlUnit, Image.Image], ...] = ()  # each ControlNet and its opened image
    init_latents: np.ndarray | None = None
    per_image_seeds: bool = False
    #: The classifier-free guidance scale (the family's: FLUX's true CFG); None: guidance_scale.
    cfg_scale: float | None = None

    @property
    def seed_rows(self) -> int:
        """The consecutive images each of `seeds` starts (a generator each, sdrt.runtime.rng.GeneratorGroup)."""
        if self.per_image_seeds:
            return 1
        return self.request.num_images if self.per_prompt_seeds else self.batch

    @property
    def image_seeds(self) -> list[int] | None:
        """Each image's seed, when each image is reproducible alone from it (None: one generator
        draws several images)."""
        if self.per_image_seeds:
            return list(self.seeds)
        return list(self.seeds) if self.seed_rows == 1 else None

    @property
    def from_image(self) -> bool:
        """Image-to-image (or inpainting): from an image or from latents."""
        return self.image is not None or self.init_latents is not None

    @property
    def batch(self) -> int:
        return len(self.prompts) * self.request.num_images

    @property
    def guided(self) -> bool:
        """Whether the batch has unconditional rows (classifier-free guidance)."""
        return (self.request.guidance_scale if self.cfg_scale is None else self.cfg_scale) > 1


def _prompts(request: GenerationRequest) -> tuple[list[str], list[str]]:
    prompt, negative = request.prompt, request.negative_prompt
    prompts = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt, (list, tuple)) else []
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise GenerationError("prompt must be a string or a non-empty list of strings", "prompt")
    if negative is None:
        negatives = [""] * len(prompts)
    elif isinstance(negative, str):
        negatives = [negative] * len(prompts)
    else:
        negatives = list(negative) if isinstance(negative, (list, tuple)) else [None]
        if len(negatives) != len(prompts) or not all(isinstance(n, str) for n in negatives):
            raise GenerationError(
                f"negative_prompt has {len(negatives)} entries for {len(prompts)} prompts", "negative_prompt"
            )
    for param, texts in (("prompt", prompts), ("negative_prompt", negatives)):
        for text in texts:
            check_text(text, param)
    return prompts, negatives


def _open(source, param: str) -> Image.Image:
    try:
        return open_image(source)
    except InputImageError as error:
        raise GenerationError(str(error), param) from None


def resolve_request(request: GenerationRequest, manifest: Manifest) -> ResolvedRequest:
    family = manifest.model_family
    if request.sampler == DEFAULT_SAMPLER and SAMPLERS[DEFAULT_SAMPLER].cls.space != family.sampler_space:
        request = replace(request, sampler=family.default_sampler)  # the default is the family's own
    family.check_request(request, manifest)
    if family.inpainting_denoiser(manifest) and request.mask_image is None:
        raise GenerationError(
            f"this is an inpainting model (UNet takes {manifest.unet_in_channels} channels): "
            "give it an init image and a mask",
            "mask_image",
        )
    if request.mask_image is not None and request.init_image is None:
        raise GenerationError("a mask needs an init image to inpaint", "init_image")
    prompts, negatives = _prompts(request)
    height, width, strength = request.height, request.width, request.strength
    image = mask = None
    if request.init_image is not None:
        image = _open(request.init_image, "init_image")
        multiple = manifest.dims[HEIGHT].multiple if HEIGHT in manifest.dims else manifest.vae_scale_factor
        try:
            height, width = target_size(image, height, width, multiple)
        except InputImageError as error:
            raise GenerationError(str(error), "init_image") from None
        if strength is None:
            strength = INPAINT_STRENGTH if request.mask_image is not None else IMG2IMG_STRENGTH
        if not isinstance(strength, (int, float)) or not 0 < strength <= 1:
            raise GenerationError(f"strength must be in (0, 1], got {strength}", "strength")
    if request.init_latents is not None:
        height, width, strength = latent_size(request, manifest, IMG2IMG_STRENGTH if strength is None else strength)
    if request.mask_options is not None and request.mask_options.check():
        raise GenerationError(request.mask_options.check(), "mask_options")
    if request.mask_image is not None:
        mask = _open(request.mask_image, "mask_image")
        if mask.size != image.size:
            raise GenerationError(
                f"the mask is {mask.width}x{mask.height} but the image is "
                f"{image.width}x{image.height}; they must have the same size",
                "mask_image",
            )
    if height is None or width is None:
        height, width = family.default_size(request, manifest, height, width)
    height = manifest.native_height if height is None else height
    width = manifest.native_width if width is None else width
    height, width = family.output_size(request, manifest, height, width)
    check_size(manifest, height, width)
    check_counts(request.steps, request.num_images)
    guidance = request.guidance_scale
    if not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
        raise GenerationError(f"guidance scale must be a finite number, got {guidance!r}", "guidance_scale")
    if guidance < 0:
        raise GenerationError(f"guidance scale must be >= 0, got {guidance}", "guidance_scale")
    if guidance > MAX_GUIDANCE:
        raise GenerationError(f"guidance scale must be at most {MAX_GUIDANCE:.3g}, got {guidance}", "guidance_scale")
    check_sampling(request, manifest)
    batch = len(prompts) * request.num_images
    if request.a1111_noise is not None:
        if not isinstance(request.a1111_noise, A1111Noise):
            raise GenerationError("a1111_noise must be an A1111Noise (sdrt.runtime.a1111_noise)", "a1111_noise")
        request.a1111_noise.check(batch)
    if not isinstance(request.img2img_fix_steps, bool):
        raise GenerationError(
            f"img2img_fix_steps must be true or false, got {request.img2img_fix_steps!r}", "img2img_fix_steps"
        )
    if request.seeds is not None:
        seeds, per_prompt = image_seeds(request.seed, request.seeds, batch), False
    else:
        seeds, per_prompt = request_seeds(request.seed, len(prompts))
    batch_range = manifest.dims.get(BATCH)
    if batch_range is not None and batch > batch_range.max:
        raise GenerationError(
            f"{batch} images at once exceed this export's batch limit of {batch_range.max}", "num_images"
        )
    options = _text_options(request)
    texts, loras = _loras(request, prompts)
    controls = tuple((unit, _open(unit.image, CONTROLNETS)) for unit in check_units(request.controlnets))
    check_vae(request, manifest)
    check_deepcache(request, manifest)
    check_cache(request, manifest)
    init_latents = None if request.init_latents is None else np.asarray(request.init_latents, np.float32)
    resolved = ResolvedRequest(
        request,
        prompts,
        negatives,
        seeds,
        per_prompt,
        int(height),
        int(width),
        None if strength is None else float(strength),
        image,
        mask,
        options,
        texts,
        loras,
        controls,
        init_latents,
        request.seeds is not None,
        family.export_cfg_scale(request, manifest),
    )
    check_combinations(resolved, family)  # what combines: the one table (sdrt.runtime.features.combinations)
    return resolved


def _loras(request: GenerationRequest, prompts: list[str]) -> tuple[list[str], tuple[LoraRef, ...]]:
    """The prompts without their `<lora:...>` tags, and the request's LoRAs (plain prompts keep
    their text as it is)."""
    if not isinstance(request.confined_names, bool):
        raise GenerationError(f"confined_names must be true or false, got {request.confined_names!r}", "confined_names")
    if isinstance(request.loras, str) or not isinstance(request.loras, (list, tuple)):
        raise GenerationError("loras must be a list of LoRAs", "loras")
    try:
        loras = [ref if isinstance(ref, LoraRef) else LoraRef.parse(ref) for ref in request.loras]
    except LoraError as error:
        raise GenerationError(str(error), "loras") from None
    for ref in loras:
        if weights_problem(ref.weights):
            raise GenerationError(f"loras: {ref.source[:100]!r}: {weights_problem(ref.weights)}", "loras")
    if request.plain_prompt or request.emphasis == COMFYUI_EMPHASIS:  # ComfyUI's prompts have no LoRA tags
        return list(prompts), tuple(loras)
    try:
        stripped = [extract_tags(prompt) for prompt in prompts]
    except LoraError as error:  # a tag's fault: the prompt's
        raise GenerationError(f"prompt: {error}", "prompt") from None
    tagged = {tuple(tags) for _, tags in stripped}
    if len(tagged) > 1:
        raise GenerationError(
            "the prompts of one request name different <lora:...> tags; give each set of LoRAs its own request",
            "prompt",
        )
    return [text for text, _ in stripped], tuple(loras) + tuple(stripped[0][1])


def _text_options(request: GenerationRequest) -> TextOptions:
    if not isinstance(request.plain_prompt, bool):
        raise GenerationError(f"plain_prompt must be true or false, got {request.plain_prompt!r}", "plain_prompt")
    if not isinstance(request.emphasis, str):
        raise GenerationError(f"emphasis must be a mode's name, got {request.emphasis!r}", "emphasis")
    mode = emphasis_mode("None" if request.plain_prompt else request.emphasis)
    if not _is_int(request.clip_skip) or not 1 <= request.clip_skip <= MAX_CLIP_SKIP:
        raise GenerationError(
            f"clip skip must be an integer from 1 to {MAX_CLIP_SKIP}, got {request.clip_skip!r}", "clip_skip"
        )
    return TextOptions(
        mode, int(request.clip_skip), t5=request.t5 is not False, max_sequence_length=request.max_sequence_length
    )
