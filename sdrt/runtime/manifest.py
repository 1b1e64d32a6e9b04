"""`manifest.json`: the single source of truth about an exported model folder.

The exporter writes it; the runtime and the engine builder only read it. It names every
tensor with its dtype and shape (ints, or the name of a dynamic dimension whose range is in
`dims`), and carries the model constants the runtime needs. docs/manifest.md documents each
field and manifest.schema.json (beside this module) is its JSON Schema, checked at load.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sdrt.errors import ModelFolderError
from sdrt.runtime.files.json_files import read_json
from sdrt.runtime.files.user_files import present
from sdrt.runtime.flux2_spec import Flux2Spec
from sdrt.runtime.manifest_checks import _check_schema, check_manifest
from sdrt.runtime.qdq_formats import QdqQuantization
from sdrt.runtime.sd3_spec import Sd3Spec
from sdrt.runtime.weight_formats import (  # noqa: F401 (read from here by the export and the CLI)
    DEFAULT_WEIGHT_BLOCK,
    WEIGHT_BLOCKS,
    WEIGHT_FORMATS,
    WeightQuantization,
)

MANIFEST_NAME = "manifest.json"
#: A manifest is a few kilobytes; anything this large is not one.
MAX_MANIFEST_BYTES = 16 * 2**20

# Dynamic dimension names in `dims` (the exporter writes them, the runtime and builder read them).
BATCH = "batch"  # images
UNET_BATCH = "unet_batch"  # the UNet sees the conditional and unconditional halves together
TIMESTEP_BATCH = "timestep_batch"  # 1 (broadcast) or unet_batch
HEIGHT, WIDTH = "height", "width"
TEXT_SEQUENCE = "text_sequence"  # the UNet's text context: whole chunks of the encoder's length
#: Chunks of the encoder's length an export's UNet takes by default (300 tokens and more).
DEFAULT_PROMPT_CHUNKS = 4
EXTRA_TOKENS = "extra_tokens"  # rows of textual-inversion vectors fed to a text encoder
#: A text encoder input: rows its token ids address from the token table's size on (textual inversion).
EXTRA_EMBEDDINGS = "extra_token_embeddings"
LATENT_HEIGHT, LATENT_WIDTH = "latent_height", "latent_width"
FORMAT_VERSION = 1
DTYPES = ("float32", "float16", "int32", "int64")
# Tensor names shared by the exporter and the runtime: the UNet's text context and SDXL's added
# conditions; the text encoders' hidden states (SD 1.x/2.x: last layer; SDXL: layer -2) and
# pooled embedding (projected for SDXL's second encoder).
UNET_CONTEXT = "encoder_hidden_states"
#: The denoiser component of the UNet families, and the tensors of one denoiser call besides its conditioning.
UNET = "unet"
DENOISER_SAMPLE, DENOISER_TIMESTEP, DENOISER_OUTPUT = "sample", "timestep", "out_sample"
#: An LCM-distilled UNet's guidance embedding input (config `time_cond_proj_dim`).
TIMESTEP_COND = "timestep_cond"
#: DeepCache (sdrt.export.deepcache): the UNet's extra output, and the graph of a cached step.
DEEP_FEATURE, UNET_SHALLOW = "deep_feature", "unet_shallow"
TEXT_EMBEDS, TIME_IDS = "text_embeds", "time_ids"
ADDED_CONDITIONS = (TEXT_EMBEDS, TIME_IDS)
LAST_HIDDEN, PENULTIMATE_HIDDEN = "last_hidden_state", "penultimate_hidden_state"
POOLED, PROJECTED = "pooler_output", "text_embeds"
# Every layer's hidden states through the final layer norm, [batch, layers, length, width]: clip skip.
LAYER_HIDDEN = "layer_hidden_states"
# ControlNet residuals (sdrt.runtime.features.controlnet): a ControlNet's outputs and the UNet's inputs of
# the same names, one per down-block output (diffusers' order) and one for the mid block. Their
# sides are the latent's over a power of two, named by `downsampled`.
DOWN_RESIDUAL_PREFIX, MID_RESIDUAL = "down_block_residual_", "mid_block_residual"
CONTROL_IMAGE = "controlnet_cond"  # a ControlNet's conditioning image, [0, 1] RGB at the image's size
#: A tiny VAE's decoder (AutoencoderTiny), exported beside the full one (sdrt.export.tiny_vae).
TINY_VAE_DECODER, TINY_VAE_ENCODER = "vae_decoder_tiny", "vae_encoder_tiny"
#: The VAEs' engines (the full one's and the tiny one's), nearly all convolutions.
VAE_COMPONENTS = ("vae_decoder", "vae_encoder", TINY_VAE_DECODER, TINY_VAE_ENCODER)
#: FLUX.1 (sdrt.runtime.families.flux): the denoiser, its inputs besides the text context, and dims.
TRANSFORMER = "transformer"
HIDDEN_STATES, POOLED_PROJECTIONS, IMG_IDS, TXT_IDS, GUIDANCE = (
    "hidden_states",
    "pooled_projections",
    "img_ids",
    "txt_ids",
    "guidance",
)
IMAGE_TOKENS, T5_SEQUENCE = "image_tokens", "t5_sequence"  # packed 2x2 latent patches; T5's padded length
#: A transformer exported in parts for the step caches (`sdrt export --cache-graphs`, sdrt.export.flux_cache):
#: the head (embeddings and the first block), the body (the other blocks) and the tail (norm_out, proj_out).
TRANSFORMER_HEAD, TRANSFORMER_BODY, TRANSFORMER_TAIL = "transformer_head", "transformer_body", "transformer_tail"
CACHE_GRAPHS = (TRANSFORMER_HEAD, TRANSFORMER_BODY, TRANSFORMER_TAIL)
#: The tensors between the parts: the first block's outputs and its image-stream residual, the
#: time/text embedding every block takes, and the last block's image-stream output.
HEAD_HIDDEN, HEAD_CONTEXT, FIRST_RESIDUAL, TEMB, BODY_HIDDEN = (
    "head_hidden_states",
    "head_encoder_hidden_states",
    "first_block_residual",
    "temb",
    "body_hidden_states",
)
#: Every engine an export may have (SDXL adds the second text encoder; a refiner has only it).
COMPONENT_NAMES = (
    "text_encoder",
    "text_encoder_2",
    "text_encoder_3",  # SD3's T5
    UNET,
    "vae_decoder",
    "vae_encoder",
    TINY_VAE_DECODER,
    TINY_VAE_ENCODER,
    UNET_SHALLOW,
    TRANSFORMER,
    *CACHE_GRAPHS,
)
#: The text encoder and tokenizer of SD 1.x/2.x exports (SDXL lists its own in `sdxl`).
CLIP_TEXT_ENCODER, CLIP_TOKENIZER = "text_encoder", "tokenizer"


def downsampled(dim: str, factor: int) -> str:
    """The name of dimension `dim` divided by `factor` (a latent side inside the UNet)."""
    return dim if factor == 1 else f"{dim}/{factor}"


def split_downsampled(name: str) -> tuple[str, int]:
    """(dim, factor) of a name `downsampled` made; (name, 1) for any other name."""
    base, _, factor = name.partition("/")
    if factor.isdigit() and int(factor) > 1 and downsampled(base, int(factor)) == name:
        return base, int(factor)
    return name, 1


def residual_names(spec: ComponentSpec) -> list[str]:
    """A UNet's or ControlNet's residual tensors, down blocks in order then the mid block
    (none for a UNet exported before ControlNet)."""
    names = {t.name for t in (*spec.inputs, *spec.outputs)}
    down = sorted(
        (n for n in names if n.startswith(DOWN_RESIDUAL_PREFIX) and n[len(DOWN_RESIDUAL_PREFIX) :].isdigit()),
        key=lambda n: int(n[len(DOWN_RESIDUAL_PREFIX) :]),
    )
    return down + [MID_RESIDUAL] if MID_RESIDUAL in names else []


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: list[int | str]


@dataclass(frozen=True)
class DimRange:
    """A dynamic dimension: valid values are min..max in steps of `multiple`."""

    min: int
    opt: int
    max: int
    multiple: int = 1

    def contains(self, value: int) -> bool:
        return self.min <= value <= self.max and value % self.multiple == 0


@dataclass(frozen=True)
class ComponentSpec:
    file: str
    precision: str
    target: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    sha256: str
    validation: dict[str, Any] = field(default_factory=dict)
    # External weight files next to `file` (models over 2 GB): relative path -> sha256.
    data_files: dict[str, str] = field(default_factory=dict)
    # LoRA's map from the model's parameter names to this graph's initializers (one of
    # data_files; sdrt.runtime.features.lora.weights_map); "" in exports made before LoRA.
    weights_map: str = ""
    # With `sdrt export --weights`: what was quantized; None for fp32/fp16 weights.
    quantization: WeightQuantization | None = None
    # With `sdrt export --qdq`: the Q/DQ graph's record (sdrt.runtime.qdq_formats); None otherwise.
    qdq: QdqQuantization | None = None
    # Attention as com.microsoft.MultiHeadAttention (CPU UNet default); False before it existed.
    fused_attention: bool = False


@dataclass(frozen=True)
class SdxlSpec:
    """What an SDXL export's runtime reads from the model's configs (diffusers' pipeline config
    and the VAE's): no SDXL constant is a literal in the runtime."""

    text_encoders: list[str]  # components, in the order their hidden states are concatenated
    tokenizers: list[str]  # folders, one per text encoder; the last encoder gives the pooled embedding
    force_zeros_for_empty_prompt: bool  # no negative prompt -> zero negative conditioning
    requires_aesthetics_score: bool  # time ids end with an aesthetic score (the refiner), not the target size
    vae_force_upcast: bool  # the VAE overflows in fp16: the exporter kept it fp32


@dataclass(frozen=True)
class FluxSpec:
    """What a FLUX.1 export's runtime reads from the model (sdrt.runtime.families.flux)."""

    text_encoders: list[str]  # [CLIP (pooled output), T5 (hidden states)]
    tokenizers: list[str]  # their folders
    max_sequence_length: int  # T5's padded length (FluxPipeline's max_sequence_length)
    guidance_embeds: bool  # guidance-distilled (dev): the transformer takes `guidance`
    t5_precision: str  # T5 overflows in fp16 on real weights: fp32 unless asked
    conditioning_channels: int = 0  # packed input channels past the latents' (FLUX.1 Fill: masked image + mask)
    kontext: bool = False  # FLUX.1 Kontext: a reference image's tokens joined to the image sequence


@dataclass(frozen=True)
class TinyVaeSpec:
    """The tiny VAE decoder's own latent scaling (TAESD: 1 and 0, its latents are the UNet's)."""

    scaling_factor: float
    shift_factor: float


@dataclass(frozen=True)
class Manifest:
    format_version: int
    family: str
    prediction_type: str
    vae_scaling_factor: float
    vae_shift_factor: float
    vae_scale_factor: int
    latent_channels: int
    unet_in_channels: int
    text_length: int
    text_hidden_size: int
    native_height: int
    native_width: int
    dims: dict[str, DimRange]
    components: dict[str, ComponentSpec]
    source: dict[str, Any]
    versions: dict[str, str]
    sdxl: SdxlSpec | None = None  # SDXL families only
    token_table_rows: dict[str, int] = field(default_factory=dict)  # text encoder -> its token table's rows
    tiny_vae: TinyVaeSpec | None = None  # with a vae_decoder_tiny component
    flux: FluxSpec | None = None  # FLUX.1 only
    sd3: Sd3Spec | None = None  # Stable Diffusion 3 / 3.5 only (sdrt.runtime.sd3_spec)
    flux2: Flux2Spec | None = None  # FLUX.2 [klein] only (sdrt.runtime.flux2_spec)

    @property
    def sampler_space(self) -> str:
        """The sampler space (sdrt.runtime.schedulers.spaces) of the family's denoiser."""
        return self.model_family.sampler_space

    @property
    def text_encoders(self) -> list[tuple[str, str]]:
        """(text encoder component, tokenizer folder) pairs, in concatenation order (the family's)."""
        return self.model_family.text_encoders(self)

    @property
    def model_family(self):
        """The registered family (sdrt.runtime.families) this export names."""
        from sdrt.runtime.families import family_named  # the families read this module's names

        return family_named(self.family)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / MANIFEST_NAME
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        if data.get("format_version") != FORMAT_VERSION:
            raise ModelFolderError(
                f"manifest format_version {data.get('format_version')!r} is not {FORMAT_VERSION}; "
                "re-export the model with this sdrt version"
            )
        data = dict(data)
        data["dims"] = {name: DimRange(**value) for name, value in data["dims"].items()}
        components = {}
        for name, value in data["components"].items():
            value = dict(value)
            value["inputs"] = [TensorSpec(**t) for t in value["inputs"]]
            value["outputs"] = [TensorSpec(**t) for t in value["outputs"]]
            if value.get("quantization") is not None:
                value["quantization"] = WeightQuantization(**value["quantization"])
            if value.get("qdq") is not None:
                value["qdq"] = QdqQuantization(**value["qdq"])
            components[name] = ComponentSpec(**value)
        data["components"] = components
        if data.get("sdxl") is not None:
            data["sdxl"] = SdxlSpec(**data["sdxl"])
        if data.get("flux") is not None:
            data["flux"] = FluxSpec(**data["flux"])
        if data.get("sd3") is not None:
            data["sd3"] = Sd3Spec(**data["sd3"])
        if data.get("flux2") is not None:
            data["flux2"] = Flux2Spec(**data["flux2"])
        if data.get("tiny_vae") is not None:
            data["tiny_vae"] = TinyVaeSpec(**data["tiny_vae"])
        return cls(**data)

    @classmethod
    def load(cls, folder: str | Path) -> Manifest:
        """The folder's manifest, validated against its JSON Schema (manifest.schema.json) and
        for what a schema cannot say: ranges in order, named sizes defined, finite numbers and
        every file inside the folder. Any defect is one ModelFolderError."""
        path = Path(folder) / MANIFEST_NAME
        if not present(path, ModelFolderError):
            raise ModelFolderError(f"{folder} has no {MANIFEST_NAME}; export the model with `sdrt export`")
        data = read_json(path, kind=object, max_bytes=MAX_MANIFEST_BYTES)
        if isinstance(data, dict) and data.get("kind") == "controlnet":
            raise ModelFolderError(
                f"{folder} is an exported ControlNet, not a model: load a model and give this folder with --controlnet"
            )
        _check_schema(data, path)
        manifest = cls.from_dict(data)
        check_manifest(manifest, path)
        return manifest
