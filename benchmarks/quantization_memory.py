"""Paper memory of full-size diffusion transformers with `sdrt export --weights int8|int4`, per
component, from parameter counts: each model built from its published configuration on torch's
meta device (no weights, no download), its parameters split into what the export packs (the
weights of Linear layers: MatMul/Gemm, sdrt.export.quantize) and what stays fp32 (embedding
tables, a Gather; convolutions; norms and biases).

    python benchmarks/quantization_memory.py        # the markdown table of docs/quantization.md

Configurations: FLUX.2 [klein] 4B and Qwen3-4B as benchmarks/flux2_memory.py records them;
Z-Image's transformer is diffusers' ZImageTransformer2DModel default (Z-Image-Turbo's published
shape: dim 3840, 30 layers, 30 heads), its text encoder Qwen3-4B (cap_feat_dim 2560) and its VAE
FLUX.1's 16-channel AutoencoderKL.
"""

from __future__ import annotations

import torch

from benchmarks.flux2_memory import KLEIN, KLEIN_LAYERS, QWEN3

MIB = 2**20
#: Bytes per packed weight: its code plus its block's share of one fp32 scale (block 32, the
#: default: sdrt.runtime.weight_formats.DEFAULT_WEIGHT_BLOCK).
BLOCK = 32
SCALE_BYTES = 4
PACKED_BYTES = {"fp32": 4.0, "int8": 1 + SCALE_BYTES / BLOCK, "int4": 0.5 + SCALE_BYTES / BLOCK}
FP32_BYTES = 4
#: The CPU machine the table answers for, and what is left for activations, the OS and Python
#: (as benchmarks/flux2_memory.py).
MACHINE_GIB, HEADROOM_GIB = 24, 4


def split(module: torch.nn.Module) -> tuple[int, int]:
    """(parameters in Linear weights, all other parameters)."""
    linear = sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))
    return linear, sum(p.numel() for p in module.parameters()) - linear


def models() -> dict[str, dict[str, tuple[int, int]]]:
    import diffusers
    from transformers import Qwen3Config, Qwen3Model

    qwen = QWEN3["4B"]
    with torch.device("meta"):
        shape, _ = KLEIN["klein 4B"]
        klein = diffusers.Flux2Transformer2DModel(
            joint_attention_dim=KLEIN_LAYERS * qwen["hidden_size"], guidance_embeds=False, **shape
        )
        encoder = split(Qwen3Model(Qwen3Config(**qwen)))
        flux_vae = diffusers.AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=16,
            down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4,
            block_out_channels=[128, 256, 512, 512],
            layers_per_block=2,
        )
        return {
            "FLUX.2 [klein] 4B": {
                "transformer": split(klein),
                "text encoder (Qwen3-4B)": encoder,
                "VAE": split(diffusers.AutoencoderKLFlux2()),
            },
            "Z-Image 6B": {
                "transformer": split(diffusers.ZImageTransformer2DModel()),
                "text encoder (Qwen3-4B)": encoder,
                "VAE": split(flux_vae),
            },
        }


def mib(linear: int, other: int, weights: str, packs: bool) -> float:
    return (linear * (PACKED_BYTES[weights] if packs else FP32_BYTES) + other * FP32_BYTES) / MIB


def table(counts: dict[str, dict[str, tuple[int, int]]]) -> str:
    columns = list(PACKED_BYTES)
    lines = [
        "| model | component | Linear weights | other parameters | " + " | ".join(f"{c} MiB" for c in columns) + " |",
        "|---|---|---:|---:|" + "---:|" * len(columns),
    ]
    for model, parts in counts.items():
        totals = dict.fromkeys(columns, 0.0)
        for part, (linear, other) in parts.items():
            packs = part != "VAE"  # sdrt.export.quantize.QUANTIZED_COMPONENTS: all but the VAEs
            sizes = {c: mib(linear, other, c, packs) for c in columns}
            for c in columns:
                totals[c] += sizes[c]
            cells = " | ".join(f"{sizes[c]:,.0f}" for c in columns)
            lines.append(f"| {model} | {part} | {linear / 1e9:.2f} B | {other / 1e9:.3f} B | {cells} |")
        cells = " | ".join(f"**{totals[c]:,.0f}** ({fits(totals[c])})" for c in columns)
        lines.append(f"| {model} | **all** | | | {cells} |")
    return "\n".join(lines)


def fits(size_mib: float) -> str:
    return "fits" if size_mib * MIB <= (MACHINE_GIB - HEADROOM_GIB) * 2**30 else "no"


if __name__ == "__main__":
    print(table(models()))
