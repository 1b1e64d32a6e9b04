"""Everything about TensorRT engines that needs no TensorRT: optimization profiles from the
manifest, the cache key that says when a built engine is still valid, engine file names, and
the device memory plan. `sdrt build` and the TensorRT backend both use it; tests run it on any
machine.

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

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sdrt.errors import ConfigError, SdrtError
from sdrt.runtime.families.zimage_tokens import IMAGE_SLOTS, slots
from sdrt.runtime.manifest import (
    BATCH,
    COMPONENT_NAMES,
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

ENGINE_FOLDER = "tensorrt"
BUILD_FILE = "build.json"  # the active build's settings, written by `sdrt build`
PLAN_SUFFIX = ".plan"
KEY_SUFFIX = ".plan.json"
#: Bumped when sdrt changes how it builds (flags, precision rules), invalidating old engines.
BUILD_FORMAT = 1
DEFAULT_MAX_BATCH = 4
DEFAULT_WORKSPACE_BYTES = 8 * 2**30
PRECISIONS = ("fp16", "fp32")


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


# ---------------------------------------------------------------- cache keys
@dataclass(frozen=True)
class Device:
    """What a built engine is specific to, besides its ONNX file and settings."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "9.0"


@dataclass(frozen=True)
class EngineKey:
    """Everything whose change makes a built engine invalid. Its digest names the engine file,
    and its fields are stored beside it to say what changed."""

    component: str
    onnx_sha256: str
    data_sha256: dict[str, str]
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    profile: dict[str, list[int]]
    build_format: int = BUILD_FORMAT
    builder: dict = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        component: str,
        spec: ComponentSpec,
        profile: Profile,
        precision: str,
        device: Device,
        builder: Mapping | None = None,
    ) -> EngineKey:
        return cls(
            component,
            spec.sha256,
            dict(spec.data_files),
            device.tensorrt_version,
            device.gpu_name,
            device.compute_capability,
            precision,
            profile.for_component(spec),
            BUILD_FORMAT,
            dict(builder or {}),
        )

    def to_json(self) -> dict:
        return asdict(self)

    def digest(self) -> str:
        canonical = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def changes_from(self, old: Mapping) -> list[str]:
        """'field: old -> new' for each field that differs from a stored key."""
        new = self.to_json()
        return [f"{name}: {old.get(name)!r} -> {new[name]!r}" for name in new if old.get(name) != new[name]]


def plan_path(folder: Path, key: EngineKey) -> Path:
    return Path(folder) / ENGINE_FOLDER / f"{key.component}-{key.digest()[:16]}{PLAN_SUFFIX}"


def key_path(plan: Path) -> Path:
    return plan.with_name(plan.name[: -len(PLAN_SUFFIX)] + KEY_SUFFIX)


def stale_reason(folder: Path, key: EngineKey) -> str | None:
    """None when the engine for `key` exists and is complete; otherwise why it must be built,
    naming what changed since the newest engine of that component (the foreign/stale case)."""
    plan = plan_path(folder, key)
    stored = key_path(plan)
    if plan.is_file() and stored.is_file():
        record = json.loads(stored.read_text(encoding="utf-8"))
        if record.get("plan_bytes") == plan.stat().st_size:
            return None
        return f"{plan.name} is incomplete (an interrupted build?)"
    others = sorted(
        (Path(folder) / ENGINE_FOLDER).glob(f"{key.component}-*{KEY_SUFFIX}"), key=lambda path: path.stat().st_mtime
    )
    if not others:
        return f"no {key.component} engine has been built"
    previous = json.loads(others[-1].read_text(encoding="utf-8")).get("key", {})
    changes = key.changes_from(previous)
    return f"the {key.component} engine was built for other settings ({'; '.join(changes)})"


def component_precision(component: str, spec: ComponentSpec, requested: str) -> str:
    """The precision a component's engine is built at. An fp16 ONNX file already says which
    operations stay fp32 (normalizations, softmax, the timestep), so it is built strongly typed,
    exactly as exported. An fp32 file follows `requested`, except the VAE, which stays fp32
    (SD's VAE overflows in fp16; export with --vae-precision fp16 to choose otherwise)."""
    if requested not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if spec.qdq is not None:  # a Q/DQ graph (sdrt export --qdq): its layers in int8 / fp8, the rest fp16
        if requested == "fp32":
            raise ConfigError(
                f"{component} is a {spec.qdq.qdq} Q/DQ graph, built in {spec.qdq.qdq} and fp16; drop --precision fp32"
            )
        return spec.qdq.qdq
    if spec.precision == "fp16":
        if requested == "fp32":
            raise ConfigError(f"{component} was exported in fp16; re-export with --precision fp32 for fp32 engines")
        return "fp16"
    if component.startswith("vae"):
        return "fp32"
    return requested


# ---------------------------------------------------------------- build settings
#: How LoRA-adaptable engines are built: their mapped weights refittable (a change here makes
#: older engines stale).
REFIT_KIND = "lora-layers"


@dataclass(frozen=True)
class BuildSettings:
    """What `sdrt build` was asked for; saved as tensorrt/build.json so the backend loads the
    same engines (and rebuilds them, with a message, when they are stale)."""

    profile: Profile
    precision: str = "fp16"
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES
    components: tuple[str, ...] = COMPONENT_NAMES  # those the model has are built

    def builder(self) -> dict:
        # Engines with a LoRA weights map are built refittable (build.refittable_weights).
        return {"workspace_bytes": self.workspace_bytes, "refit": REFIT_KIND}

    def save(self, folder: Path) -> Path:
        path = Path(folder) / ENGINE_FOLDER / BUILD_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "profile": self.profile.to_json(),
            "precision": self.precision,
            "workspace_bytes": self.workspace_bytes,
            "components": list(self.components),
        }
        path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, folder: Path) -> BuildSettings:
        path = Path(folder) / ENGINE_FOLDER / BUILD_FILE
        if not path.is_file():
            raise SdrtError(f"{folder} has no TensorRT engines: build them with `sdrt build {folder}`")
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(
            Profile.from_json(data["profile"]),
            data["precision"],
            int(data["workspace_bytes"]),
            tuple(data["components"]),
        )
