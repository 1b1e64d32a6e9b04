"""TensorRT optimization profiles from the manifest (no TensorRT needed): `sdrt build` plans one,
the backend reads it back from build.json, and tests run it on any machine.

A profile gives every dynamic dimension of the manifest a (min, opt, max) triple. The user picks
image sizes and a batch limit; each dimension follows from them by a rule of the pipeline
(`DIM_RULES`): the UNet batch is twice the image batch (guidance), the timestep is one value,
latent sides are image sides over the VAE's scale factor, a diffusion transformer's image
tokens are the latent grid's patches (a patch being the latent sides' multiple, which the
export sets to the transformer's patch size; FLUX.2 [klein]'s VAE graph patchifies, so its
multiple is 1), plus the reference images' tokens the family's edits join to them (FLUX.1 Kontext's
one, FLUX.2 [klein]'s up to four: Family.reference_tokens, capped at the export's range), Z-Image's
image slots those tokens padded to its sequence multiple. A dimension
the size and batch do not set (the T5 length of FLUX, Chroma and SD3, SD3's joined text
sequence, the Qwen3 lengths of klein and Z-Image: the runtime pads text to the export's length;
Z-Image's caption slots, which follow the prompt) keeps the export's own (min, opt, max) from
the manifest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sdrt.errors import ConfigError
from sdrt.runtime.families.zimage_tokens import IMAGE_SLOTS, slots
from sdrt.runtime.manifest import (
    BATCH,
    EXTRA_TOKENS,
    HEIGHT,
    IMAGE_TOKENS,
    LATENT_HEIGHT,
    LATENT_WIDTH,
    TEXT_SEQUENCE,
    TIMESTEP_BATCH,
    UNET_BATCH,
    WIDTH,
    ComponentSpec,
    DimRange,
    Manifest,
    split_downsampled,
)

DEFAULT_MAX_BATCH = 4


@dataclass(frozen=True)
class Request:
    """The pipeline quantities every dimension derives from."""

    batch: int
    height: int
    width: int
    guided: bool = True
    text_tokens: int = 0  # the UNet's text context length (whole chunks of the encoder's length)
    extra_tokens: int = 1  # rows of textual-inversion vectors the text encoders get
    patch: int = 1  # the latent sides' multiple: a diffusion transformer's patch (image tokens)


#: Each manifest dimension as a function of (request, VAE scale factor).
DIM_RULES: dict[str, Callable[[Request, int], int]] = {
    BATCH: lambda r, f: r.batch,
    UNET_BATCH: lambda r, f: r.batch * (2 if r.guided else 1),
    TIMESTEP_BATCH: lambda r, f: 1,  # the pipeline feeds one timestep, broadcast over the batch
    HEIGHT: lambda r, f: r.height,
    WIDTH: lambda r, f: r.width,
    LATENT_HEIGHT: lambda r, f: r.height // f,
    LATENT_WIDTH: lambda r, f: r.width // f,
    TEXT_SEQUENCE: lambda r, f: r.text_tokens,
    EXTRA_TOKENS: lambda r, f: r.extra_tokens,
    IMAGE_TOKENS: lambda r, f: DIM_RULES[LATENT_HEIGHT](r, f) // r.patch * (DIM_RULES[LATENT_WIDTH](r, f) // r.patch),
    # Z-Image's image tokens padded to its sequence multiple (sdrt.runtime.families.zimage_tokens).
    IMAGE_SLOTS: lambda r, f: slots(DIM_RULES[IMAGE_TOKENS](r, f)),
}
#: Dimensions named `downsampled(dim, factor)` (latent sides inside the UNet) follow these.
DOWNSAMPLED_DIMS = (LATENT_HEIGHT, LATENT_WIDTH)


def dim_rule(name: str) -> Callable[[Request, int], int] | None:
    """The rule of a manifest dimension (None: sdrt does not know it)."""
    if name in DIM_RULES:
        return DIM_RULES[name]
    base, factor = split_downsampled(name)
    if base not in DOWNSAMPLED_DIMS or factor == 1:
        return None
    return lambda r, f, rule=DIM_RULES[base]: rule(r, f) // factor


@dataclass(frozen=True)
class Profile:
    """(min, opt, max) of every dynamic dimension; one TensorRT optimization profile."""

    dims: dict[str, tuple[int, int, int]]
    static: bool = False

    def dim_ranges(self, manifest: Manifest) -> dict[str, DimRange]:
        """As the manifest's DimRange, keeping each dimension's multiple: the runtime's input
        checks and size limits then refer to what the engines were built for."""
        return {
            name: DimRange(low, opt, high, manifest.dims[name].multiple if name in manifest.dims else 1)
            for name, (low, opt, high) in self.dims.items()
        }

    def shapes(self, spec: ComponentSpec) -> dict[str, tuple[list[int], list[int], list[int]]]:
        """(min, opt, max) shapes of each input of a component (for set_shape)."""
        result = {}
        for tensor in spec.inputs:
            triple = ([], [], [])
            for size in tensor.shape:
                for which in range(3):
                    triple[which].append(size if isinstance(size, int) else self.dims[size][which])
            result[tensor.name] = triple
        return result

    def for_component(self, spec: ComponentSpec) -> dict[str, list[int]]:
        """The dimensions a component's tensors use (its part of the cache key)."""
        names = sorted({size for t in spec.inputs + spec.outputs for size in t.shape if isinstance(size, str)})
        return {name: list(self.dims[name]) for name in names}

    def values(self, request: Request, scale_factor: int) -> dict[str, int]:
        return {name: dim_rule(name)(request, scale_factor) for name in self.dims}

    def to_json(self) -> dict:
        return {"dims": {name: list(triple) for name, triple in self.dims.items()}, "static": self.static}

    @classmethod
    def from_json(cls, data: Mapping) -> Profile:
        return cls({name: tuple(triple) for name, triple in data["dims"].items()}, bool(data.get("static", False)))


def plan_profile(
    manifest: Manifest,
    *,
    static: tuple[int, int] | None = None,
    min_size: tuple[int, int] | None = None,
    opt_size: tuple[int, int] | None = None,
    max_size: tuple[int, int] | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    opt_batch: int = 1,
    max_prompt_chunks: int | None = None,
) -> Profile:
    """The profile for sizes given as (height, width): `static` fixes the size (what CUDA graphs
    want); otherwise min/opt/max default to the export's range and the native size. The text
    context takes 1 to `max_prompt_chunks` chunks (default: the export's limit), opt 1."""
    height_range, width_range = manifest.dims[HEIGHT], manifest.dims[WIDTH]
    if static is not None:
        if min_size or opt_size or max_size:
            raise ConfigError("--static fixes the size: leave out --min, --opt and --max")
        min_size = opt_size = max_size = static
    min_size = min_size or (height_range.min, width_range.min)
    max_size = max_size or (height_range.max, width_range.max)
    opt_size = opt_size or (manifest.native_height, manifest.native_width)
    labelled = [("static", static)] if static else [("min", min_size), ("opt", opt_size), ("max", max_size)]
    for label, (height, width) in labelled:
        for side, value, valid in (("height", height, height_range), ("width", width, width_range)):
            if not valid.contains(value):
                raise ConfigError(
                    f"{label} {side} {value} must be a multiple of {valid.multiple} within this export's "
                    f"range {valid.min}..{valid.max}"
                )
    for axis, side in ((0, "height"), (1, "width")):
        if not min_size[axis] <= opt_size[axis] <= max_size[axis]:
            raise ConfigError(
                f"{side}s must satisfy min <= opt <= max, got {min_size[axis]}, {opt_size[axis]}, {max_size[axis]}"
            )
    batch_limit = manifest.dims[BATCH].max
    if not 1 <= max_batch <= batch_limit:
        raise ConfigError(f"--max-batch must be from 1 to this export's {batch_limit}, got {max_batch}")
    opt_batch = min(opt_batch, max_batch)
    factor = manifest.vae_scale_factor
    one_chunk, most_tokens = _text_tokens(manifest, max_prompt_chunks)
    extra = manifest.dims[EXTRA_TOKENS].max if EXTRA_TOKENS in manifest.dims else 1  # the export's limit
    patch = manifest.dims[LATENT_HEIGHT].multiple
    low = Request(1, *min_size, guided=False, text_tokens=one_chunk, patch=patch)
    opt = Request(opt_batch, *opt_size, guided=True, text_tokens=one_chunk, patch=patch)
    high = Request(max_batch, *max_size, guided=True, text_tokens=most_tokens, extra_tokens=extra, patch=patch)
    dims: dict[str, tuple[int, int, int]] = {}
    for name, valid in manifest.dims.items():
        rule = dim_rule(name)
        dims[name] = export_range(valid) if rule is None else (rule(low, factor), rule(opt, factor), rule(high, factor))
    if IMAGE_TOKENS in dims:
        dims[IMAGE_TOKENS] = _with_references(manifest, dims[IMAGE_TOKENS])
    return Profile(dims, static=static is not None)


def _with_references(manifest: Manifest, tokens: tuple[int, int, int]) -> tuple[int, int, int]:
    """The image tokens' range with the family's reference tokens added, within the export's."""
    extra = manifest.model_family.reference_tokens(manifest, tokens)
    limit = manifest.dims[IMAGE_TOKENS].max
    low, opt, high = (min(own + more, limit) for own, more in zip(tokens, extra, strict=True))
    return low, opt, high


def export_range(valid: DimRange) -> tuple[int, int, int]:
    """A dimension the size and batch do not set: the export's own range (a text length)."""
    return valid.min, valid.opt, valid.max


def _text_tokens(manifest: Manifest, max_chunks: int | None) -> tuple[int, int]:
    """One chunk's tokens and the most tokens of the profile."""
    valid = manifest.dims.get(TEXT_SEQUENCE)
    if valid is None:
        if max_chunks not in (None, 1):
            raise ConfigError("this export's UNet takes one prompt chunk: re-export it for --max-prompt-chunks")
        return manifest.text_length, manifest.text_length
    limit = valid.max // valid.multiple
    chunks = limit if max_chunks is None else max_chunks
    if not 1 <= chunks <= limit:
        raise ConfigError(f"--max-prompt-chunks must be from 1 to this export's {limit}, got {chunks}")
    return valid.min, chunks * valid.multiple
