"""What an export writes beside its engines, read from the pipeline: the tokenizer and scheduler
folders, model_index.json, the model family, the SDXL settings and the tool versions."""

from __future__ import annotations

import json
from pathlib import Path

from sdrt import __version__
from sdrt.export.components import clip_family, is_sdxl
from sdrt.export.sdxl import TOKENIZER_OF, sdxl_spec
from sdrt.export.sdxl import family as sdxl_family
from sdrt.runtime.manifest import SdxlSpec

ONNX_SD_PIPELINE = "OnnxStableDiffusionPipeline"
ONNX_SDXL_PIPELINE = "ORTStableDiffusionXLPipeline"  # optimum's class for this layout


def family(pipeline) -> str:
    """sd1, sd2 (OpenCLIP text encoder: linear attention projections), sdxl or sdxl-refiner."""
    return sdxl_family(pipeline) if is_sdxl(pipeline) else clip_family(pipeline)


def sdxl_settings(pipeline) -> SdxlSpec | None:
    return sdxl_spec(pipeline) if is_sdxl(pipeline) else None


def versions() -> dict[str, str]:
    import diffusers
    import onnx
    import onnxruntime
    import torch
    import transformers

    return {
        "sdrt": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def write_diffusers_files(pipeline, folder: Path, components: list[str]) -> None:
    """tokenizer folders, scheduler/ and a model_index.json naming the ONNX components (the
    layout diffusers' OnnxStableDiffusionPipeline and optimum's SDXL pipeline read)."""
    import diffusers

    tokenizers = [name for name in TOKENIZER_OF.values() if getattr(pipeline, name, None) is not None]
    for name in tokenizers:
        getattr(pipeline, name).save_pretrained(folder / name)
    pipeline.scheduler.save_config(folder / "scheduler")
    onnx_model = ["diffusers", "OnnxRuntimeModel"]
    index = {
        "_class_name": ONNX_SDXL_PIPELINE if is_sdxl(pipeline) else ONNX_SD_PIPELINE,
        "_diffusers_version": diffusers.__version__,
        **{name: onnx_model for name in components},
        **{name: ["transformers", type(getattr(pipeline, name)).__name__] for name in tokenizers},
        "scheduler": ["diffusers", type(pipeline.scheduler).__name__],
    }
    if not is_sdxl(pipeline):
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
