"""Single-file FLUX.1 and SD3/SD3.5 checkpoints: one `.safetensors` holding the transformer in
its original key layout (Black Forest Labs' for FLUX.1, Stability's for SD3), alone or inside a
full checkpoint under `model.diffusion_model.`.

The transformer loads through diffusers' `from_single_file` (its key converters, safetensors only:
nothing is unpickled); the configs and every other component come from `--config`, a diffusers
folder or hub id of the same model (a full checkpoint's VAE and text encoders are not read).
"""

from __future__ import annotations

from pathlib import Path

from sdrt.errors import ModelFolderError

#: The prefix full (ComfyUI / SAI) checkpoints put the transformer under; transformer-only files have none.
FULL_CHECKPOINT_PREFIX = "model.diffusion_model."
#: A tensor every checkpoint of the layout has (BFL's flux/model.py, SAI's sd3/mmditx.py names).
LAYOUT_MARKERS = {
    "flux": "double_blocks.0.img_attn.qkv.weight",
    "sd3": "joint_blocks.0.x_block.attn.qkv.weight",
}
#: What each layout is, for messages, and the diffusers transformer class that reads it.
LAYOUT_NAMES = {"flux": "FLUX.1 (Black Forest Labs layout)", "sd3": "SD3/SD3.5 (Stability layout)"}
TRANSFORMER_CLASSES = {"flux": "FluxTransformer2DModel", "sd3": "SD3Transformer2DModel"}
TRANSFORMER_SUBFOLDER = "transformer"


def checkpoint_layout(keys) -> str | None:
    """ "flux", "sd3" or None, from a checkpoint's tensor names."""
    names = set(keys)
    for layout, marker in LAYOUT_MARKERS.items():
        if marker in names or FULL_CHECKPOINT_PREFIX + marker in names:
            return layout
    return None


def layout_of_class(class_name: str, flux_classes: tuple[str, ...], sd3_class: str) -> str | None:
    """The checkpoint layout a diffusers pipeline class's transformer is saved in, if any."""
    if class_name in flux_classes:
        return "flux"
    return "sd3" if class_name == sd3_class else None


def check_dit_checkpoint(path: Path, layout: str | None, expected: str | None, config: str | None) -> str:
    """The layout to load `path` with, or one clear error: no --config, or keys of neither layout
    (or of the other one) for a --config of a FLUX.1 / SD3 model."""
    wanted = expected or layout
    assert wanted is not None
    if config is None:
        raise ModelFolderError(
            f"{path} is a {LAYOUT_NAMES[wanted]} transformer checkpoint; pass --config with the diffusers "
            "folder or hub id of the same model (its configs, VAE and text encoders)"
        )
    if layout != wanted:
        markers = " or ".join(f"{FULL_CHECKPOINT_PREFIX}{m}" for m in LAYOUT_MARKERS.values())
        raise ModelFolderError(
            f"{path} is not a {LAYOUT_NAMES[wanted]} checkpoint as --config {config} calls for: its keys "
            f"are in neither the FLUX.1 nor the SD3 layout (expected e.g. {markers}, prefix optional)"
            if layout is None
            else f"{path} is a {LAYOUT_NAMES[layout]} checkpoint but --config {config} is {LAYOUT_NAMES[wanted]}"
        )
    return wanted


def load_dit_transformer(path: Path, layout: str, config: str):
    """The transformer, converted by diffusers from the file, configured by `config`'s transformer/."""
    import diffusers
    import torch

    model_class = getattr(diffusers, TRANSFORMER_CLASSES[layout])
    local = Path(config).expanduser().is_dir()
    return model_class.from_single_file(
        str(path),
        config=str(config),
        subfolder=TRANSFORMER_SUBFOLDER,
        local_files_only=local,
        torch_dtype=torch.float32,
    )
