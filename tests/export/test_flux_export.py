"""`sdrt export` of FLUX.1: the manifest (single source of tensor names, shapes and model
constants), every engine validated against PyTorch, the traced transformer equal to diffusers'
module, T5's precision, and the tokenizer.json the runtime reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sdrt.export.exporter import ExportOptions
from sdrt.export.flux import CLIP_ENCODER, T5_ENCODER, component_options, image_ids
from sdrt.export.flux_export import t5_precision_for
from sdrt.export.flux_tracing import traceable
from sdrt.runtime.manifest import (
    GUIDANCE,
    HIDDEN_STATES,
    IMAGE_TOKENS,
    IMG_IDS,
    POOLED_PROJECTIONS,
    T5_SEQUENCE,
    TRANSFORMER,
    TXT_IDS,
    UNET_CONTEXT,
    Manifest,
)
from sdrt.runtime.text.t5_tokenizer import TOKENIZER_JSON


@pytest.mark.parametrize("kind", ["dev", "schnell"])
def test_manifest_names_every_tensor_and_reads_the_constants_from_the_configs(tiny_flux, exported_flux, kind):
    manifest = Manifest.load(exported_flux(kind))
    vae = json.loads((tiny_flux[kind] / "vae" / "config.json").read_text())
    transformer = json.loads((tiny_flux[kind] / "transformer" / "config.json").read_text())
    assert manifest.family == "flux" and manifest.prediction_type == "flow_prediction"
    assert (manifest.vae_scaling_factor, manifest.vae_shift_factor) == (vae["scaling_factor"], vae["shift_factor"])
    assert manifest.latent_channels == vae["latent_channels"] == 16
    assert manifest.flux.guidance_embeds == transformer["guidance_embeds"] == (kind == "dev")
    assert manifest.flux.max_sequence_length == (512 if kind == "dev" else 256)
    inputs = {t.name: t.shape for t in manifest.components[TRANSFORMER].inputs}
    expected = [HIDDEN_STATES, "timestep", UNET_CONTEXT, POOLED_PROJECTIONS, IMG_IDS, TXT_IDS]
    assert list(inputs) == expected + ([GUIDANCE] if kind == "dev" else [])
    assert inputs[HIDDEN_STATES][1] == IMAGE_TOKENS and inputs[UNET_CONTEXT][1] == T5_SEQUENCE
    assert inputs[IMG_IDS][0] == IMAGE_TOKENS and inputs[TXT_IDS][0] == T5_SEQUENCE
    for name, spec in manifest.components.items():
        assert spec.validation["passed"] and spec.validation["max_rel_error"] < 1e-4, name
    assert (exported_flux(kind) / "tokenizer_2" / TOKENIZER_JSON).is_file()


def test_the_traced_transformer_equals_diffusers_module(tiny_flux):
    """The graph is validated against the traceable rewrite; this holds the rewrite to diffusers."""
    from diffusers import FluxTransformer2DModel

    folder = tiny_flux["dev"] / "transformer"
    original = FluxTransformer2DModel.from_pretrained(folder).eval()
    rewritten = traceable(FluxTransformer2DModel.from_pretrained(folder).eval())
    generator = torch.Generator().manual_seed(0)
    config = original.config
    tokens, text = 12, 7
    inputs = {
        "hidden_states": torch.randn(2, tokens, config.in_channels, generator=generator),
        "encoder_hidden_states": torch.randn(2, text, config.joint_attention_dim, generator=generator),
        "pooled_projections": torch.randn(2, config.pooled_projection_dim, generator=generator),
        "timestep": torch.tensor([0.7, 0.2]),
        "guidance": torch.tensor([3.5, 1.0]),
        "img_ids": image_ids(6, 8),
        "txt_ids": torch.zeros(text, 3),
    }
    with torch.no_grad():
        expected = original(**inputs, return_dict=False)[0]
        got = rewritten(**inputs, return_dict=False)[0]
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=0, atol=1e-5 * float(expected.abs().max()))


def test_t5_stays_fp32_under_fp16_unless_asked():
    fp16 = ExportOptions(precision="fp16")
    assert t5_precision_for(fp16) == "fp32"
    assert component_options(fp16, T5_ENCODER, t5_precision_for(fp16)).precision == "fp32"
    assert component_options(fp16, CLIP_ENCODER, t5_precision_for(fp16)).precision == "fp16"
    asked = ExportOptions(precision="fp16", t5_precision="fp16")
    assert component_options(asked, T5_ENCODER, t5_precision_for(asked)).precision == "fp16"


def test_a_t5_with_only_spiece_model_is_written_with_a_tokenizer_json(tiny_flux, tmp_path):
    """Google's T5 releases ship spiece.model only: the export writes the tokenizer.json the
    runtime reads, and its pieces are SentencePiece's own."""
    import shutil
    from types import SimpleNamespace

    import sentencepiece
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import CLIPTokenizer

    from sdrt.export.flux import write_flux_files
    from sdrt.export.random_flux import CORPUS, SPIECE_MODEL, t5_tokenizer_from_spiece
    from sdrt.runtime.text.t5_tokenizer import T5Tokenizer

    source = tiny_flux["dev"]
    spiece_only = tmp_path / "spiece-only"
    spiece_only.mkdir()
    shutil.copy(source / "tokenizer_2" / SPIECE_MODEL, spiece_only / SPIECE_MODEL)
    pipeline = SimpleNamespace(
        tokenizer=CLIPTokenizer.from_pretrained(source / "tokenizer"),
        tokenizer_2=t5_tokenizer_from_spiece(spiece_only),
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(source / "scheduler"),
    )
    out = tmp_path / "export"
    write_flux_files(pipeline, out, [TRANSFORMER])
    ours = T5Tokenizer.from_folder(out / "tokenizer_2", max_length=64)
    reference = sentencepiece.SentencePieceProcessor(model_file=str(spiece_only / SPIECE_MODEL))
    for text in CORPUS.read_text(encoding="utf-8").splitlines():
        assert ours.tokenize(text) == reference.encode(text), text
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "FluxPipeline"


def test_a_fill_export_records_its_conditioning_channels(exported_flux_fill):
    """FLUX.1 Fill: the transformer's input is the packed latents, the masked image's latents and
    the mask's cells (64 + 64 + 256 on the tiny model: its VAE is 8x, as the real one)."""
    manifest = Manifest.load(exported_flux_fill["export"])
    config = json.loads((exported_flux_fill["source"] / "transformer" / "config.json").read_text())
    shapes = {t.name: t.shape for t in manifest.components[TRANSFORMER].inputs}
    outputs = {t.name: t.shape for t in manifest.components[TRANSFORMER].outputs}
    assert shapes[HIDDEN_STATES][2] == config["in_channels"] == 384 and outputs["out_sample"][2] == 64
    assert manifest.flux.conditioning_channels == 320 and not manifest.flux.kontext
    assert manifest.components[TRANSFORMER].validation["passed"]
    index = json.loads((exported_flux_fill["export"] / "model_index.json").read_text())
    assert index["_class_name"] == "FluxFillPipeline"


@pytest.mark.slow
def test_a_kontext_export_admits_the_reference_tokens(tmp_path):
    """`sdrt export --random tiny-flux-kontext`: the manifest says Kontext and the image tokens'
    range doubles (the reference's join the image's)."""
    from sdrt.export.exporter import export_model
    from sdrt.export.random_flux import save_random_flux

    source = save_random_flux(tmp_path / "kontext", kind="kontext", seed=0)
    manifest = export_model(str(source), tmp_path / "export", progress=lambda line: None)
    plain = Manifest.load(tmp_path / "export")
    assert plain.flux.kontext and manifest.flux.conditioning_channels == 0
    assert plain.dims[IMAGE_TOKENS].max == 2 * 128**2
