"""A manifest for ONNX folders made elsewhere (diffusers' conversion script, Optimum), which
carry no manifest.json: read from the graphs' inputs and outputs and the folder's configs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdrt.errors import ModelFolderError
from sdrt.runtime.engines.onnxruntime import session_tensor_specs
from sdrt.runtime.families.sd import InferredStableDiffusion
from sdrt.runtime.files.json_files import read_json
from sdrt.runtime.files.user_files import present
from sdrt.runtime.manifest import (
    CLIP_TEXT_ENCODER,
    CLIP_TOKENIZER,
    FORMAT_VERSION,
    HEIGHT,
    WIDTH,
    ComponentSpec,
    DimRange,
    Manifest,
)

ONNX_FILE = "model.onnx"
#: The inferred family's denoiser: its component and input names.
DENOISER = InferredStableDiffusion.denoiser
FOLDER_COMPONENTS = (CLIP_TEXT_ENCODER, DENOISER.component, "vae_decoder", "vae_encoder")
# The SD 1.x/2.x VAE latent scale, used only when the folder has no vae config: diffusers'
# OnnxStableDiffusionPipeline assumes the same value for such folders.
SD_VAE_SCALING_FACTOR = 0.18215
# SD's VAE halves the resolution three times; a UNet with four resolution levels halves the
# latents three more, so latent sides are multiples of 8 in graphs traced at such sizes.
SD_VAE_SCALE_FACTOR = 8
SD_LATENT_MULTIPLE = 8


def _read_json(path: Path) -> dict:
    return read_json(path) if present(path, ModelFolderError) else {}


def infer_manifest(
    folder: Path, open_session: Callable[[Path], Any], session_tensors=session_tensor_specs
) -> tuple[Manifest, dict[str, Any]]:
    """The manifest, and the sessions opened (with `open_session`) to read the graphs' tensors:
    the caller's engines adopt them rather than load each model a second time. `session_tensors`
    reads a session's input and output TensorSpecs (the backend's own)."""
    if not present(folder / "model_index.json", ModelFolderError):
        raise ModelFolderError(
            f"{folder} is not an exported model (no manifest.json or model_index.json); "
            f"export one with `sdrt export MODEL --out {folder}`"
        )
    components, sessions = {}, {}
    for name in FOLDER_COMPONENTS:
        path = folder / name / ONNX_FILE
        if not path.is_file():
            continue
        sessions[name] = session = open_session(path)
        inputs, outputs = session_tensors(session)
        components[name] = ComponentSpec(
            file=f"{name}/{ONNX_FILE}", precision="unknown", target="unknown", inputs=inputs, outputs=outputs, sha256=""
        )
    for required in (CLIP_TEXT_ENCODER, DENOISER.component, "vae_decoder"):
        if required not in components:
            raise ModelFolderError(f"{folder}/{required}/{ONNX_FILE} is missing")
    unet_sample = {t.name: t for t in components[DENOISER.component].inputs}[DENOISER.sample]
    first_output = components[CLIP_TEXT_ENCODER].outputs[0]
    tokenizer_config = _read_json(folder / CLIP_TOKENIZER / "tokenizer_config.json")
    text_length = _fixed(first_output.shape[1], tokenizer_config.get("model_max_length"))
    vae = _read_json(folder / "vae_decoder" / "config.json")
    scheduler = _read_json(folder / "scheduler" / "scheduler_config.json")
    unet = _read_json(folder / DENOISER.component / "config.json")
    vae_scale = 2 ** (len(vae["block_out_channels"]) - 1) if "block_out_channels" in vae else SD_VAE_SCALE_FACTOR
    latent_channels = _fixed(components["vae_decoder"].inputs[0].shape[1], vae.get("latent_channels"))
    native_latent = unet.get("sample_size") or SD_LATENT_MULTIPLE * SD_VAE_SCALE_FACTOR
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        family=InferredStableDiffusion.name,
        prediction_type=scheduler.get("prediction_type", "epsilon"),
        vae_scaling_factor=float(vae.get("scaling_factor", SD_VAE_SCALING_FACTOR)),
        vae_shift_factor=float(vae.get("shift_factor") or 0.0),
        vae_scale_factor=vae_scale,
        latent_channels=latent_channels,
        unet_in_channels=_fixed(unet_sample.shape[1], unet.get("in_channels")),
        text_length=text_length,
        text_hidden_size=_fixed(first_output.shape[2], None),
        native_height=native_latent * vae_scale,
        native_width=native_latent * vae_scale,
        dims={
            HEIGHT: DimRange(vae_scale, native_latent * vae_scale, 2**16, vae_scale * SD_LATENT_MULTIPLE),
            WIDTH: DimRange(vae_scale, native_latent * vae_scale, 2**16, vae_scale * SD_LATENT_MULTIPLE),
        },
        components=components,
        source={"inferred_from": str(folder)},
        versions={},
    )
    return manifest, sessions


def _fixed(size, fallback) -> int:
    if isinstance(size, int):
        return size
    if isinstance(fallback, int):
        return fallback
    raise ModelFolderError(f"cannot tell a model size from the graph ({size!r}) or its config")
