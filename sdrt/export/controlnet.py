"""`sdrt export` of a ControlNet (diffusers' `ControlNetModel`: a folder, a hub id, or a single
file with --config) to a folder with one validated engine and its manifest (kind "controlnet",
sdrt.runtime.features.controlnet.manifest).

The engine takes the UNet's inputs (scaled latents, timestep, text context; SDXL's pooled text
embedding and time ids) and the control image in [0, 1], and returns the residuals unscaled
(conditioning scale 1, no guess mode): the runtime applies each request's scale, guidance window
and control mode, so one engine serves them all. A ControlNet whose config sets
`global_pool_conditions` averages its residuals inside the graph, as diffusers' model does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from sdrt.errors import ModelFolderError, SdrtError
from sdrt.export.component_build import component_spec, export_component
from sdrt.export.components import ComponentExport, ModelGeometry
from sdrt.export.model_files import versions
from sdrt.export.options import ExportOptions
from sdrt.export.residuals import residual_layout, residual_specs
from sdrt.export.sdxl import MAX_SIZE_CONDITION
from sdrt.export.staging import staged
from sdrt.runtime.features.controlnet.manifest import COMPONENT, KIND, ControlNetManifest
from sdrt.runtime.manifest import (
    CONTROL_IMAGE,
    FORMAT_VERSION,
    HEIGHT,
    LATENT_HEIGHT,
    LATENT_WIDTH,
    TEXT_EMBEDS,
    TEXT_SEQUENCE,
    TIME_IDS,
    TIMESTEP_BATCH,
    UNET_BATCH,
    UNET_CONTEXT,
    WIDTH,
    TensorSpec,
)

CLASS_NAME = "ControlNetModel"
#: The context length of every SD family's CLIP text encoders; a model's own ranges replace the
#: ControlNet's when it loads, so this only shapes the export's validation inputs.
CLIP_TEXT_LENGTH = 77
#: Latent side of the validation inputs (SD 1.5's 512 pixels).
VALIDATION_LATENT_SIZE = 64
#: SDXL ControlNets are trained with the base model's time ids: original size, crop, target size.
SDXL_TIME_IDS = 6
NUM_TRAIN_TIMESTEPS = 1000  # timestep range of the validation inputs
SD2_TEXT_WIDTH = 1024  # OpenCLIP ViT-H's width, which tells SD 2.x ControlNets from SD 1.x ones


class ControlNet(torch.nn.Module):
    """Inputs as the UNet's plus the control image -> the residuals, down blocks then mid."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, *added):
        kwargs = {"added_cond_kwargs": {TEXT_EMBEDS: added[0], TIME_IDS: added[1]}} if added else {}
        down, mid = self.model(
            sample,
            timestep,
            encoder_hidden_states,
            controlnet_cond,
            conditioning_scale=1.0,
            guess_mode=False,
            return_dict=False,
            **kwargs,
        )
        return (*down, mid)


def is_sdxl_controlnet(config) -> bool:
    return getattr(config, "addition_embed_type", None) == "text_time"


def controlnet_family(config) -> str:
    if is_sdxl_controlnet(config):
        return "sdxl"
    return "sd2" if config.cross_attention_dim == SD2_TEXT_WIDTH else "sd1"


def controlnet_geometry(config) -> ModelGeometry:
    return ModelGeometry(
        latent_channels=config.in_channels,
        unet_in_channels=config.in_channels,
        text_length=CLIP_TEXT_LENGTH,
        text_hidden_size=config.cross_attention_dim,
        vae_scale_factor=2 ** (len(config.conditioning_embedding_out_channels) - 1),
        unet_size_multiple=2 ** (len(config.down_block_types) - 1),
        native_latent_size=VALIDATION_LATENT_SIZE,
    )


def controlnet_component(model) -> ComponentExport:
    config = model.config
    g = controlnet_geometry(config)
    f32 = "float32"
    residuals = residual_layout(config)
    added = []
    if is_sdxl_controlnet(config):
        pooled = config.projection_class_embeddings_input_dim - config.addition_time_embed_dim * SDXL_TIME_IDS
        added = [
            TensorSpec(TEXT_EMBEDS, f32, [UNET_BATCH, pooled]),
            TensorSpec(TIME_IDS, f32, [UNET_BATCH, SDXL_TIME_IDS]),
        ]

    def make_inputs(gen, batch, latent_h, latent_w):
        rows = 2 * batch
        inputs = (
            torch.randn(rows, g.latent_channels, latent_h, latent_w, generator=gen),
            torch.randint(0, NUM_TRAIN_TIMESTEPS, (rows,), generator=gen).to(torch.float32),
            torch.randn(rows, g.context_length(batch), g.text_hidden_size, generator=gen),
            torch.rand(
                rows,
                config.conditioning_channels,
                latent_h * g.vae_scale_factor,
                latent_w * g.vae_scale_factor,
                generator=gen,
            ),
        )
        if added:
            inputs += (
                torch.randn(rows, added[0].shape[1], generator=gen),
                torch.randint(0, MAX_SIZE_CONDITION, (rows, SDXL_TIME_IDS), generator=gen).to(torch.float32),
            )
        return inputs

    return ComponentExport(
        COMPONENT,
        ControlNet(model),
        [
            TensorSpec("sample", f32, [UNET_BATCH, g.latent_channels, LATENT_HEIGHT, LATENT_WIDTH]),
            TensorSpec("timestep", f32, [TIMESTEP_BATCH]),
            TensorSpec(UNET_CONTEXT, f32, [UNET_BATCH, TEXT_SEQUENCE, g.text_hidden_size]),
            TensorSpec(CONTROL_IMAGE, f32, [UNET_BATCH, config.conditioning_channels, HEIGHT, WIDTH]),
            *added,
        ],
        residual_specs(residuals),
        make_inputs,
    )


def export_controlnet_model(
    model,
    out_dir: str | Path,
    *,
    source: dict,
    options: ExportOptions | None = None,
    overwrite: bool = False,
    progress: Callable[[str], None] = print,
) -> ControlNetManifest:
    """Export, validate and write a ControlNet's folder; returns its manifest."""
    options = ExportOptions() if options is None else options  # made now: its defaults are read when made
    config = model.config
    geometry = controlnet_geometry(config)
    component = controlnet_component(model)
    with staged(Path(out_dir), overwrite) as staging:
        final, files, validation = export_component(component, staging, geometry, options, progress)
        spec = component_spec(component, staging, final, files, validation, options)
        (staging / COMPONENT / "config.json").write_text(
            json.dumps(dict(config), indent=2, default=str) + "\n", encoding="utf-8"
        )
        manifest = ControlNetManifest(
            format_version=FORMAT_VERSION,
            kind=KIND,
            family=controlnet_family(config),
            text_hidden_size=geometry.text_hidden_size,
            latent_channels=geometry.latent_channels,
            conditioning_channels=config.conditioning_channels,
            conditioning_scale_factor=geometry.vae_scale_factor,
            global_pool_conditions=bool(config.global_pool_conditions),
            dims=geometry.dims(),
            components={COMPONENT: spec},
            source=source,
            versions=versions(),
        )
        manifest.save(staging)
    return manifest


def is_controlnet_source(source: str) -> bool:
    """Whether `source` names a ControlNet: a folder whose config.json is a ControlNetModel's, a
    checkpoint with ControlNet tensors, or a hub id whose config says so."""
    path = Path(source).expanduser()
    if path.is_dir():
        return not (path / "model_index.json").is_file() and _class_of(path / "config.json") == CLASS_NAME
    if path.is_file():
        return path.suffix.lower() == ".safetensors" and _has_controlnet_tensors(path)
    return False


def _class_of(config_path: Path) -> str | None:
    try:
        return json.loads(config_path.read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None


def _has_controlnet_tensors(path: Path) -> bool:
    from sdrt.runtime.files.safetensors_files import tensor_names

    try:
        keys = tensor_names(path)
    except (OSError, SdrtError):  # not readable as safetensors: the pipeline loader reports it
        return False
    return any(key.startswith(("controlnet_cond_embedding.", "control_model.input_hint_block.")) for key in keys)


def load_controlnet(source: str, config: str | None = None):
    """A ControlNetModel in float32 from a folder, a single file (with --config offline) or a hub id."""
    from diffusers import ControlNetModel

    path = Path(source).expanduser()
    try:
        if path.is_dir():
            return ControlNetModel.from_pretrained(path)
        if path.is_file():
            kwargs = {} if config is None else {"config": str(config), "local_files_only": True}
            return ControlNetModel.from_single_file(str(path), **kwargs)
        return ControlNetModel.from_pretrained(source)
    except Exception as error:  # diffusers raises many types for a bad, unknown or unreachable model
        raise ModelFolderError(f"cannot load the ControlNet {source}: {str(error).splitlines()[0]}") from None
