"""`sdrt bench --arch sd35-medium` (SD3.5 Medium's architecture, random weights, no T5): the full
size's configs checked on the meta device (no memory), the command at random_sd3's tiny widths
and depths (default tier: from cached folders; slow tier: built, exported, against diffusers)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from sdrt.cli import main
from sdrt.export import random_sd35

#: SD3.5 Medium's transformer file holds 2.47 B values: 2.24 B parameters and the 384 x 384 x 1536
#: position table, a buffer (diffusers' SD3Transformer2DModel); the CLIPs are ViT-L's and bigG's.
TRANSFORMER_PARAMETERS = 2_243_171_520
CLIP_G_PARAMETERS = 694_659_840


def test_full_size_configs_are_sd35_medium():
    from diffusers import SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    configs = random_sd35.sd35_medium_configs("full")
    transformer = configs["transformer"]
    assert transformer["num_layers"] == 24 and transformer["dual_attention_layers"] == list(range(13))
    assert transformer["pooled_projection_dim"] == 768 + 1280 and configs["vae"]["latent_channels"] == 16
    with torch.device("meta"):
        model = SD3Transformer2DModel(**transformer)
        clip_g = CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder_2"]))
    assert sum(p.numel() for p in model.parameters()) == TRANSFORMER_PARAMETERS
    assert sum(p.numel() for p in clip_g.parameters()) == CLIP_G_PARAMETERS


def test_tiny_build_keeps_the_structure():
    pipeline = random_sd35.build_sd35_medium("tiny")
    assert pipeline.text_encoder_3 is None and pipeline.transformer.config.qk_norm == "rms_norm"
    assert pipeline.transformer.config.dual_attention_layers == (0,)
    assert pipeline.vae.config.latent_channels == 16 and pipeline.scheduler.config.shift == 3.0


@pytest.mark.slow
def test_bench_arch_sd35_medium_runs_the_command_path(exported_sd3, tiny_sd3, monkeypatch, tmp_path):
    """The cached arch folders stand in for the build (the slow test below builds them): the
    command reaches the SD3 export without T5 and benchmarks it with the family's sampler."""
    arch = tmp_path / "cache" / "arch"
    arch.mkdir(parents=True)
    (arch / "sd35-medium-onnx-fp32").symlink_to(exported_sd3("no-t5"), target_is_directory=True)
    (arch / "sd35-medium-diffusers").symlink_to(tiny_sd3, target_is_directory=True)
    monkeypatch.setenv("SDRT_CACHE", str(tmp_path / "cache"))
    report = tmp_path / "bench.json"
    arguments = ["--steps", "1", "--height", "32", "--width", "32", "--runs", "1", "--warmup", "0"]
    result = CliRunner().invoke(main, ["bench", "--arch", "sd35-medium", *arguments, "--json", str(report)])
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["settings"]["sampler"] == "flow_euler"  # the family's default on both sides
    assert data["sdrt"]["stages"]["end_to_end"]["median"] > 0


@pytest.mark.slow
def test_bench_arch_sd35_medium_builds_exports_and_runs_against_diffusers(monkeypatch, tmp_path):
    """The whole path at the tiny size: the random build from the presets, the export without T5,
    and the diffusers side loading the T5-less folder (text_encoder_3 None) with flow_euler."""
    full_configs = random_sd35.sd35_medium_configs
    monkeypatch.setattr(random_sd35, "sd35_medium_configs", lambda size="full": full_configs("tiny"))
    monkeypatch.setenv("SDRT_CACHE", str(tmp_path / "cache"))
    report = tmp_path / "bench.json"
    arguments = ["--steps", "2", "--height", "32", "--width", "32", "--runs", "1", "--warmup", "0"]
    result = CliRunner().invoke(
        main, ["bench", "--arch", "sd35-medium", *arguments, "--compare", "diffusers", "--json", str(report)]
    )
    assert result.exit_code == 0, result.output
    assert len(json.loads(report.read_text())["speedup_vs_diffusers"]["pairs"]) == 1
    manifest = json.loads((tmp_path / "cache" / "arch" / "sd35-medium-onnx-fp32" / "manifest.json").read_text())
    assert manifest["family"] == "sd3" and "text_encoder_3" not in manifest["components"]
