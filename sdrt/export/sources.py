"""Load a Stable Diffusion 1.x/2.x pipeline from what users have: a diffusers folder, a
single-file `.safetensors` / `.ckpt` checkpoint, or a Hugging Face hub id."""

from __future__ import annotations

import json
from pathlib import Path

from sdrt.errors import ModelFolderError

REQUIRED_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
UNSUPPORTED_COMPONENTS = {"text_encoder_2": "SDXL", "transformer": "a diffusion transformer (SD3, Flux)"}


def _check_diffusers_folder(folder: Path) -> None:
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise ModelFolderError(
            f"{folder} is not a diffusers model folder (no model_index.json); pass a diffusers "
            "folder, a .safetensors/.ckpt checkpoint or a hub id"
        )
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ModelFolderError(f"{index_path} is not valid JSON: {error}") from None
    for component, family in UNSUPPORTED_COMPONENTS.items():
        if component in index:
            raise ModelFolderError(f"{folder} is {family}; sdrt exports Stable Diffusion 1.x and 2.x only")
    missing = [c for c in REQUIRED_COMPONENTS if not (folder / c).is_dir()]
    if missing:
        raise ModelFolderError(f"{folder} lacks the component folder(s): {', '.join(missing)}")


def load_pipeline(source: str, config: str | None = None):
    """A `StableDiffusionPipeline` on the CPU, from a folder, checkpoint or hub id.

    `config` (a diffusers folder with the component configs) is for single-file checkpoints
    on machines without network access: diffusers otherwise downloads the matching configs.
    """
    from diffusers import StableDiffusionPipeline

    path = Path(source).expanduser()
    common = {"safety_checker": None, "requires_safety_checker": False}  # weights load as float32
    if path.is_dir():
        _check_diffusers_folder(path)
        try:
            return StableDiffusionPipeline.from_pretrained(path, **common)
        except (OSError, ValueError, KeyError) as error:
            raise ModelFolderError(f"cannot load {path}: {error}") from None
    if path.is_file():
        if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise ModelFolderError(f"{path} is not a checkpoint (expected {' or '.join(CHECKPOINT_SUFFIXES)})")
        kwargs = dict(common)
        if config is not None:
            kwargs.update(config=str(config), local_files_only=True)
        try:
            return StableDiffusionPipeline.from_single_file(str(path), **kwargs)
        except Exception as error:  # diffusers raises many types for a bad or unknown checkpoint
            hint = "" if config else "; offline, pass --config with a diffusers folder of matching configs"
            raise ModelFolderError(f"cannot load checkpoint {path}: {error}{hint}") from None
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise ModelFolderError(f"{source} does not exist (expected a folder, a checkpoint file or a hub id)")
    try:
        return StableDiffusionPipeline.from_pretrained(source, **common)
    except Exception as error:  # network, authentication and missing-repo errors differ by version
        raise ModelFolderError(
            f"cannot download {source} from the Hugging Face hub ({type(error).__name__}); "
            "check the network and the id, or pass a local folder"
        ) from None
