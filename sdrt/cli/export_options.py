"""`sdrt export`'s options: the model to export (or a random one), the graphs' precision and
target, and the extra graphs and quantizations an export can carry."""

from __future__ import annotations

from collections.abc import Callable

import click

from sdrt.cli.types import with_options
from sdrt.runtime.manifest import DEFAULT_PROMPT_CHUNKS, DEFAULT_WEIGHT_BLOCK, WEIGHT_BLOCKS, WEIGHT_FORMATS
from sdrt.runtime.qdq_formats import DEFAULT_QDQ_PROMPTS, QDQ_FORMATS

RANDOM_NAMES = (
    "tiny",
    "sd15",
    "tiny-sdxl",
    "sdxl",
    "tiny-flux",
    "tiny-flux-schnell",
    "tiny-flux-fill",
    "tiny-flux-kontext",
    "tiny-sd3",
    "tiny-sd3-no-t5",
    "tiny-chroma",
    "sd35-medium",
    "tiny-flux2-klein",
    "tiny-flux2-klein-base",
    "tiny-zimage",
)  # sdrt.export.random_sources.RANDOM_MODELS (no import here)


def export_options(command: Callable) -> Callable:
    """Adds every `sdrt export` option after MODEL to a command, in --help's order."""
    options = [
        click.option(
            "--random",
            "random_name",
            default=None,
            type=click.Choice(RANDOM_NAMES),
            help="Instead of MODEL: a random-weight model, to try every step offline.",
        ),
        click.option(
            "--out",
            "out_dir",
            default=None,
            type=click.Path(file_okay=False),
            help="Output folder (default: engines/NAME, NAME from MODEL).",
        ),
        click.option(
            "--config",
            "config_dir",
            default=None,
            type=click.Path(file_okay=False, exists=True),
            help="For a single-file checkpoint offline: a diffusers folder with matching configs.",
        ),
        click.option(
            "--precision",
            type=click.Choice(["fp32", "fp16"]),
            default="fp32",
            show_default=True,
            help="UNet and text encoder precision (normalizations and softmax stay fp32).",
        ),
        click.option(
            "--vae-precision",
            type=click.Choice(["fp32", "fp16"]),
            default="fp32",
            show_default=True,
            help="VAE precision: the fp16 SD VAE can overflow into NaN/black images.",
        ),
        click.option(
            "--t5-precision",
            type=click.Choice(["fp32", "fp16"]),
            default=None,
            help="FLUX.1's T5 encoder [default: fp32, even with --precision fp16: T5 overflows in fp16].",
        ),
        click.option(
            "--no-t5",
            "no_t5",
            is_flag=True,
            help="SD3: leave T5 out (the runtime feeds zeros in its place, as diffusers without text_encoder_3).",
        ),
        click.option(
            "--target",
            type=click.Choice(["cpu", "cuda"]),
            default="cpu",
            show_default=True,
            help="Execution provider the graphs are made for.",
        ),
        click.option(
            "--optimize",
            is_flag=True,
            help="Apply the target's graph optimizations (CUDA: fused attention, GroupNorm, GELU).",
        ),
        click.option(
            "--fused-attention/--no-fused-attention",
            default=None,
            help="The UNet's attention as ONNX Runtime's MultiHeadAttention (no score matrix in memory) "
            "[default: on for fp32 --target cpu exports without --weights]; asked for, also SD3's "
            "transformer's RMS norms and tanh GELUs as ONNX Runtime's fused operators.",
        ),
        click.option(
            "--max-prompt-chunks",
            default=DEFAULT_PROMPT_CHUNKS,
            show_default=True,
            type=click.IntRange(min=1),
            help="Longest prompt the UNet takes, in chunks of 75 tokens (A1111's long prompts).",
        ),
        click.option(
            "--tiny-vae",
            default=None,
            metavar="SOURCE",
            help="Also export this AutoencoderTiny (TAESD/TAESDXL folder or hub id) as a fast decoder (--vae tiny).",
        ),
        click.option(
            "--deepcache",
            is_flag=True,
            help="Also export the graphs DeepCache needs (generate --deepcache; a few MB, SD 1.x/2.x).",
        ),
        click.option(
            "--cache-graphs",
            is_flag=True,
            help="FLUX.1: also export the transformer in parts, for the step caches "
            "(generate --cache; docs/step-caches.md).",
        ),
        click.option(
            "--weights",
            type=click.Choice(list(WEIGHT_FORMATS)),
            default=None,
            help="Quantize the UNet's and text encoders' MatMul weights to 8 or 4 bits "
            "(ONNX Runtime MatMulNBits, CPU).",
        ),
        click.option(
            "--weight-block",
            type=click.Choice([str(b) for b in WEIGHT_BLOCKS]),
            default=str(DEFAULT_WEIGHT_BLOCK),
            show_default=True,
            help="With --weights: weights per quantization scale.",
        ),
        click.option(
            "--qdq",
            type=click.Choice(list(QDQ_FORMATS)),
            default=None,
            help="The UNet/transformer as a Q/DQ graph for TensorRT int8 or fp8 engines "
            "(sdrt build; fp8 needs SM 8.9+).",
        ),
        click.option(
            "--qdq-prompts",
            default=DEFAULT_QDQ_PROMPTS,
            show_default=True,
            type=int,
            help="With --qdq: prompts whose denoising runs calibrate the scales (one more is held out to check them).",
        ),
        click.option("--overwrite", is_flag=True, help="Replace an existing export in --out."),
    ]
    return with_options(command, options)
