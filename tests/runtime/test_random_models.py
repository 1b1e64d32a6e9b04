"""The random-weight test models: valid diffusers folders of each kind, and the real SD 1.5 size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    LMSDiscreteScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from PIL import Image

from sdrt.errors import ConfigError
from sdrt.export.random_model import component_configs, save_random_pipeline

# transformers 5 saves a tokenizer as tokenizer.json alone (no vocab.json / merges.txt).
LAYOUT = [
    "model_index.json",
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
    "scheduler/scheduler_config.json",
]
# Parameters of the SD 1.5 UNet (the architecture's published size is 860M).
SD15_UNET_PARAMETERS = 859_520_964


@pytest.mark.parametrize("kind", ["standard", "inpaint", "v_prediction"])
def test_tiny_model_is_a_working_diffusers_folder(tiny_models, kind):
    folder = tiny_models[kind]
    for name in LAYOUT:
        assert (folder / name).is_file(), name
    pipeline_class = StableDiffusionInpaintPipeline if kind == "inpaint" else StableDiffusionPipeline
    pipeline = pipeline_class.from_pretrained(folder)
    pipeline.scheduler = LMSDiscreteScheduler.from_config(pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    size = pipeline.unet.config.sample_size * pipeline.vae_scale_factor
    extra = {}
    if kind == "inpaint":
        extra = {"image": Image.new("RGB", (size, size), "gray"), "mask_image": Image.new("L", (size, size), 255)}
    image = pipeline(
        "a photo of a cat", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0), **extra
    ).images
    assert image.shape == (1, size, size, 3) and np.isfinite(image).all() and image.std() > 0

    expected = {
        "standard": (4, "epsilon", "<|endoftext|>"),
        "inpaint": (9, "epsilon", "<|endoftext|>"),
        "v_prediction": (4, "v_prediction", "!"),
    }[kind]
    got = (pipeline.unet.config.in_channels, pipeline.scheduler.config.prediction_type, pipeline.tokenizer.pad_token)
    assert got == expected
    # The real CLIP vocabulary, so token ids are realistic.
    assert pipeline.text_encoder.config.vocab_size == len(pipeline.tokenizer.get_vocab()) == 49408


def test_seeded_models_are_reproducible(tmp_path):
    first = save_random_pipeline(tmp_path / "a", kind="standard", seed=3)
    second = save_random_pipeline(tmp_path / "b", kind="standard", seed=3)
    for component in ("unet", "vae", "text_encoder"):
        a = sorted((first / component).glob("*.safetensors"))
        b = sorted((second / component).glob("*.safetensors"))
        assert a and [p.read_bytes() for p in a] == [p.read_bytes() for p in b]


def test_existing_output_folder_is_not_overwritten(tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        save_random_pipeline(tmp_path / "taken")


def test_sd15_preset_is_the_full_size_architecture():
    configs = component_configs("sd15", "standard")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(configs["unet"])
    assert sum(p.numel() for p in unet.parameters()) == SD15_UNET_PARAMETERS
    assert configs["text_encoder"]["hidden_size"] == configs["unet"]["cross_attention_dim"] == 768


def test_unknown_kind_or_size_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown model kind"):
        component_configs("tiny", "sdxl")
    with pytest.raises(ConfigError, match="unknown model size"):
        component_configs("huge", "standard")
