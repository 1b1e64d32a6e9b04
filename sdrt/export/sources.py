"""Load a Stable Diffusion 1.x/2.x or SDXL pipeline from what users have: a diffusers folder, a
single-file `.safetensors` / `.ckpt` checkpoint, or a Hugging Face hub id."""

from __future__ import annotations

from pathlib import Path

from sdrt.errors import ModelFolderError
from sdrt.runtime.files.json_files import read_json
from sdrt.runtime.files.user_files import present

REQUIRED_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
UNSUPPORTED_COMPONENTS: dict[str, str] = {}
#: Stable Diffusion 3 / 3.5 folders (sdrt.export.sd3); text_encoder_3 (T5) is optional.
SD3_CLASS = "StableDiffusion3Pipeline"
SD3_COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler")
#: FLUX.1 folders (sdrt.export.flux): diffusers' class names and their components.
FLUX_CLASS = "FluxPipeline"
#: FLUX.1 Fill and Kontext load with their own classes (the Fill transformer's extra channels, Kontext's edits).
FLUX_VARIANT_CLASSES = ("FluxFillPipeline", "FluxKontextPipeline")
#: Chroma's pipeline class and component folders (sdrt.export.chroma).
CHROMA_CLASS = "ChromaPipeline"
#: FLUX.2 [klein]'s pipeline class (sdrt.export.flux2).
FLUX2_KLEIN_CLASS = "Flux2KleinPipeline"
CHROMA_COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
#: Z-Image's pipeline class (sdrt.export.zimage); its components are Chroma's.
ZIMAGE_CLASS = "ZImagePipeline"
FLUX_COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler")
SDXL_COMPONENT = "text_encoder_2"
# diffusers pipeline classes by what a model is; the refiner has no first text encoder, which
# only the image-to-image class accepts.
SD_CLASS, SDXL_CLASS, SDXL_REFINER_CLASS = (
    "StableDiffusionPipeline",
    "StableDiffusionXLPipeline",
    "StableDiffusionXLImg2ImgPipeline",
)
SDXL_CLASSES = (SDXL_CLASS, SDXL_REFINER_CLASS, "StableDiffusionXLInpaintPipeline")
# Single-file SDXL checkpoints keep their text encoders under these prefixes (LDM "conditioner").
SDXL_CHECKPOINT_PREFIX = "conditioner.embedders."
SDXL_FIRST_ENCODER_PREFIX = "conditioner.embedders.0.transformer."


class NotAPipeline(ModelFolderError):
    """A hub repository that exists but holds no pipeline (a ControlNet's, for instance)."""


def _pipeline_class_for_index(index: dict) -> str:
    """The diffusers class that loads a folder with this model_index.json."""
    if index.get("_class_name") in FLUX_VARIANT_CLASSES:
        return str(index["_class_name"])
    if str(index.get("_class_name", "")) == FLUX2_KLEIN_CLASS:
        return FLUX2_KLEIN_CLASS
    if str(index.get("_class_name", "")).startswith("Flux"):
        return FLUX_CLASS
    if str(index.get("_class_name", "")).startswith("StableDiffusion3") or "text_encoder_3" in index:
        return SD3_CLASS
    if str(index.get("_class_name", "")).startswith("Chroma"):
        return CHROMA_CLASS
    if str(index.get("_class_name", "")).startswith("ZImage"):
        return ZIMAGE_CLASS
    if SDXL_COMPONENT not in index:
        return SD_CLASS
    if "transformer" in index:
        return FLUX_CLASS
    if index.get("text_encoder", [None])[0] is None:
        return SDXL_REFINER_CLASS
    named = index.get("_class_name")
    return named if named in SDXL_CLASSES else SDXL_CLASS


def _pipeline_class_for_checkpoint(path: Path, config: str | None) -> str:
    """From the configs folder when given, else from the checkpoint's tensor names (read from a
    .safetensors header; a .ckpt is assumed SD 1.x/2.x unless --config says otherwise)."""
    if config is not None and (Path(config) / "model_index.json").is_file():
        return _pipeline_class_for_index(_read_index(Path(config)))
    if path.suffix.lower() != ".safetensors":
        return SD_CLASS
    keys = _checkpoint_keys(path)
    if not any(key.startswith(SDXL_CHECKPOINT_PREFIX) for key in keys):
        return SD_CLASS
    first = any(key.startswith(SDXL_FIRST_ENCODER_PREFIX) for key in keys)
    return SDXL_CLASS if first else SDXL_REFINER_CLASS


def _checkpoint_keys(path: Path) -> list[str]:
    """The tensor names in a .safetensors file's header."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            return list(handle.keys())
    except Exception as error:  # safetensors raises its own error types for a corrupt header
        raise ModelFolderError(f"cannot load checkpoint {path}: {error}") from None


def _dit_checkpoint(path: Path, config: str | None) -> tuple[str, str] | None:
    """(pipeline class, key layout) for a FLUX.1 or SD3 transformer checkpoint, known from its keys
    or from a local --config folder's class; None for the UNet models' checkpoints."""
    from sdrt.export.dit_single_file import check_dit_checkpoint, checkpoint_layout, layout_of_class

    is_safetensors = path.suffix.lower() == ".safetensors"
    layout = checkpoint_layout(_checkpoint_keys(path)) if is_safetensors else None
    class_name = None
    if config is not None and (Path(config).expanduser() / "model_index.json").is_file():
        class_name = _pipeline_class_for_index(_read_index(Path(config).expanduser()))
    expected = (
        None if class_name is None else layout_of_class(class_name, (FLUX_CLASS, *FLUX_VARIANT_CLASSES), SD3_CLASS)
    )
    if layout is None and expected is None:
        return None
    if not is_safetensors:
        raise ModelFolderError(f"{path}: FLUX.1 and SD3 single files load from .safetensors only")
    layout = check_dit_checkpoint(path, layout, expected, config)
    return class_name or (FLUX_CLASS if layout == "flux" else SD3_CLASS), layout


def _load_dit_pipeline(diffusers, path: Path, config: str, class_name: str, layout: str):
    """The pipeline of `config` with its transformer read from the single file `path`."""
    from sdrt.export.dit_single_file import load_dit_transformer

    folder = Path(config).expanduser()
    try:
        transformer = load_dit_transformer(path, layout, config)
        absent = _absent_components(_read_index(folder)) if class_name == SD3_CLASS and folder.is_dir() else {}
        source = folder if folder.is_dir() else config
        return _from(diffusers, class_name, "from_pretrained", source, transformer=transformer, **absent)
    except Exception as error:  # diffusers raises many types for a bad checkpoint or config
        raise ModelFolderError(f"cannot load checkpoint {path} with --config {config}: {error}") from None


def _read_index(folder: Path) -> dict:
    return read_json(folder / "model_index.json", advice="pass a diffusers model folder")


def _check_diffusers_folder(folder: Path) -> dict:
    """The folder's model_index.json, once the folder is known to hold a supported model."""
    index_path = folder / "model_index.json"
    if not present(index_path, ModelFolderError):
        raise ModelFolderError(
            f"{folder} is not a diffusers model folder (no model_index.json); pass a diffusers "
            "folder, a .safetensors/.ckpt checkpoint or a hub id"
        )
    index = _read_index(folder)
    for component, family in UNSUPPORTED_COMPONENTS.items():
        if component in index:
            raise ModelFolderError(
                f"{folder} is {family}; sdrt exports Stable Diffusion 1.x, 2.x, SDXL and FLUX.1 only"
            )
    kind = _pipeline_class_for_index(index)
    if "transformer" in index and kind not in (
        FLUX_CLASS,
        *FLUX_VARIANT_CLASSES,
        SD3_CLASS,
        CHROMA_CLASS,
        ZIMAGE_CLASS,
        FLUX2_KLEIN_CLASS,
    ):
        raise ModelFolderError(
            f"{folder} is a diffusion transformer sdrt does not export "
            "(FLUX.1, FLUX.2 klein, SD3, Chroma and Z-Image only)"
        )
    required = REQUIRED_COMPONENTS
    # Z-Image and FLUX.2 klein have Chroma's component folders.
    if kind in (SD3_CLASS, CHROMA_CLASS, ZIMAGE_CLASS, FLUX2_KLEIN_CLASS):
        required = SD3_COMPONENTS if kind == SD3_CLASS else CHROMA_COMPONENTS
    elif "transformer" in index:
        required = FLUX_COMPONENTS
    elif SDXL_COMPONENT in index:
        required = ("unet", "vae", SDXL_COMPONENT, "tokenizer_2", "scheduler")
    missing = [c for c in required if not (folder / c).is_dir()]
    if missing:
        raise ModelFolderError(f"{folder} lacks the component folder(s): {', '.join(missing)}")
    return index


def load_pipeline(source: str, config: str | None = None):
    """A `StableDiffusionPipeline` (or an SDXL one) on the CPU, from a folder, checkpoint or hub id.

    `config` (a diffusers folder with the component configs) is for single-file checkpoints
    on machines without network access: diffusers otherwise downloads the matching configs.
    """
    import diffusers

    path = Path(source).expanduser()
    if path.is_dir():
        index = _check_diffusers_folder(path)
        absent = {}
        if _pipeline_class_for_index(index) == SD3_CLASS:  # diffusers cannot reload its own None components
            absent = _absent_components(index)
        try:
            return _from(diffusers, _pipeline_class_for_index(index), "from_pretrained", path, **absent)
        except (OSError, ValueError, KeyError) as error:
            raise ModelFolderError(f"cannot load {path}: {error}") from None
    if path.is_file():
        if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise ModelFolderError(f"{path} is not a checkpoint (expected {' or '.join(CHECKPOINT_SUFFIXES)})")
        dit = _dit_checkpoint(path, config)
        if dit is not None:
            return _load_dit_pipeline(diffusers, path, str(config), *dit)
        kwargs = {} if config is None else {"config": str(config), "local_files_only": True}
        class_name = _pipeline_class_for_checkpoint(path, config)
        try:
            return _from(diffusers, class_name, "from_single_file", str(path), **kwargs)
        except Exception as error:  # diffusers raises many types for a bad or unknown checkpoint
            hint = "" if config else "; offline, pass --config with a diffusers folder of matching configs"
            raise ModelFolderError(f"cannot load checkpoint {path}: {error}{hint}") from None
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise ModelFolderError(f"{source} does not exist (expected a folder, a checkpoint file or a hub id)")
    try:
        index = diffusers.DiffusionPipeline.load_config(source)
        return _from(diffusers, _pipeline_class_for_index(index), "from_pretrained", source)
    except Exception as error:  # network, authentication and missing-repo errors differ by version
        from huggingface_hub.errors import EntryNotFoundError

        if isinstance(error, EntryNotFoundError):  # the repository exists, without model_index.json
            raise NotAPipeline(f"{source} is not a diffusers pipeline (it has no model_index.json)") from None
        raise ModelFolderError(
            f"cannot download {source} from the Hugging Face hub ({type(error).__name__}); "
            "check the network and the id, or pass a local folder"
        ) from None


def load_folder(folder: str | Path, **kwargs):
    """A diffusers folder with the pipeline class its model_index.json calls for (SD or SDXL)."""
    import diffusers

    index = _read_index(Path(folder))
    class_name = _pipeline_class_for_index(index)
    if class_name == SD3_CLASS:  # as load_pipeline: SD3 without T5 saved its absent components as None
        kwargs = {**_absent_components(index), **kwargs}
    return _from(diffusers, class_name, "from_pretrained", folder, **kwargs)


def _absent_components(index: dict) -> dict[str, None]:
    return {name: None for name, kind in index.items() if isinstance(kind, list) and kind[:1] == [None]}


def _from(diffusers, class_name: str, method: str, source, **kwargs):
    """`class_name.method(source)` with the arguments that class takes: SD pipelines drop their
    safety checker, SDXL ones their watermarker. Weights load as float32."""
    if class_name in SDXL_CLASSES:
        kwargs["add_watermarker"] = False
    elif class_name not in (FLUX_CLASS, *FLUX_VARIANT_CLASSES, SD3_CLASS):
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    return getattr(getattr(diffusers, class_name), method)(source, **kwargs)
