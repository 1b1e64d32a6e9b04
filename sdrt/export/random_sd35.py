"""SD3.5 Medium's full-size architecture with random weights and without T5, for benchmarks
(`sdrt bench --arch sd35-medium`, `sdrt export --random sd35-medium`), from the presets in
sdrt/export/presets (sd35_medium for the transformer, VAE and scheduler; sdxl for its CLIP-L
and CLIP-G encoders, which SD3 reads with projection). T5-XXL (about 19 GB in fp32) is left
out: the pipeline runs with text_encoder_3 None, zeros in its place, as diffusers does.

size "tiny" keeps the structure with random_sd3's tiny widths and depths, so tests run the
same command path in seconds. Needs the export extra (torch, diffusers, transformers).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from sdrt.errors import ConfigError
from sdrt.export.random_flux import _realistic_rms_norms
from sdrt.export.random_model import PRESETS_DIR, SD2_PAD_TOKEN, SD15_PRESET, realistic_norms
from sdrt.export.random_sd3 import TINY_CLIP, TINY_CLIP_G, TINY_SD3_VAE, TINY_TRANSFORMER

SD35_PRESET = PRESETS_DIR / "sd35_medium"
CLIP_PRESET = PRESETS_DIR / "sdxl"  # CLIP ViT-L (text_encoder) and OpenCLIP bigG (text_encoder_2)
SD35_SIZES = ("full", "tiny")
#: Without T5 the transformer's text width is still T5's (the CLIP join is padded to it).
TINY_JOINT_ATTENTION_DIM = 96


def _preset(folder: Path, name: str) -> dict[str, Any]:
    data = json.loads((folder / name).read_text(encoding="utf-8"))
    return {key: value for key, value in data.items() if not key.startswith("_") and key != "architectures"}


def sd35_medium_configs(size: str = "full") -> dict[str, dict[str, Any]]:
    """Every component's config; the pooled width is the two CLIP projections joined."""
    if size not in SD35_SIZES:
        raise ConfigError(f"unknown SD3.5 Medium size {size!r}; choose one of {', '.join(SD35_SIZES)}")
    configs = {
        "transformer": _preset(SD35_PRESET, "transformer/config.json"),
        "vae": _preset(SD35_PRESET, "vae/config.json"),
        "scheduler": _preset(SD35_PRESET, "scheduler/scheduler_config.json"),
        "text_encoder": _preset(CLIP_PRESET, "text_encoder/config.json"),
        "text_encoder_2": _preset(CLIP_PRESET, "text_encoder_2/config.json"),
    }
    if size == "tiny":
        configs["transformer"].update(TINY_TRANSFORMER, joint_attention_dim=TINY_JOINT_ATTENTION_DIM)
        configs["vae"].update(TINY_SD3_VAE)
        blocks = len(TINY_SD3_VAE["block_out_channels"])
        configs["vae"]["down_block_types"] = configs["vae"]["down_block_types"][:blocks]
        configs["vae"]["up_block_types"] = configs["vae"]["up_block_types"][:blocks]
        configs["text_encoder"].update(TINY_CLIP)
        configs["text_encoder_2"].update(TINY_CLIP_G)
    first, second = configs["text_encoder"], configs["text_encoder_2"]
    configs["transformer"]["pooled_projection_dim"] = first["projection_dim"] + second["projection_dim"]
    return configs


#: The pipeline's components in build order (the seeded weights depend on it), then the rest.
WEIGHTED = ("text_encoder", "text_encoder_2", "transformer", "vae")
ABSENT = ("text_encoder_3", "tokenizer_3", "feature_extractor", "image_encoder")  # None in the folder
PIPELINE_CLASS = "StableDiffusion3Pipeline"


def _components(size: str, seed: int):
    """(name, component) of the pipeline, each made when asked for: a caller that saves and drops
    each one holds one component's weights at a time (the full transformer alone is 9 GB)."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    configs = sd35_medium_configs(size)
    torch.manual_seed(seed)
    for offset, name in enumerate(("text_encoder", "text_encoder_2")):
        encoder = CLIPTextModelWithProjection(CLIPTextConfig(**configs[name]))
        realistic_norms(encoder, seed + offset)
        yield name, encoder
    transformer = SD3Transformer2DModel(**configs["transformer"])
    _realistic_rms_norms(transformer, seed + 2)
    yield "transformer", transformer
    yield "vae", AutoencoderKL(**configs["vae"])
    yield "scheduler", FlowMatchEulerDiscreteScheduler(**configs["scheduler"])
    yield "tokenizer", CLIPTokenizer.from_pretrained(SD15_PRESET / "tokenizer")
    yield "tokenizer_2", CLIPTokenizer.from_pretrained(SD15_PRESET / "tokenizer", pad_token=SD2_PAD_TOKEN)


def build_sd35_medium(size: str = "full", seed: int = 0):
    """A StableDiffusion3Pipeline of SD3.5 Medium's shape without T5, seeded random weights."""
    import diffusers

    parts = dict(_components(size, seed))
    return getattr(diffusers, PIPELINE_CLASS)(**parts, text_encoder_3=None, tokenizer_3=None)


def save_sd35_medium(out_dir: str | Path, size: str = "full", seed: int = 0) -> Path:
    """The random SD3.5 Medium pipeline saved as a diffusers folder, one component at a time
    (the same weights as build_sd35_medium), written aside, then renamed."""
    import gc

    import diffusers

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise ConfigError(f"{out_dir} already exists")
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    index: dict[str, Any] = {"_class_name": PIPELINE_CLASS, "_diffusers_version": diffusers.__version__}
    try:
        for name, component in _components(size, seed):
            if name in WEIGHTED:
                component.save_pretrained(staging / name, safe_serialization=True)
            else:
                component.save_pretrained(staging / name)
            index[name] = [type(component).__module__.split(".")[0], type(component).__name__]
            del component
            gc.collect()
        index.update({name: [None, None] for name in ABSENT})
        (staging / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", "utf-8")
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir
