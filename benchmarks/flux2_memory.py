"""Paper memory of the full FLUX.2 [klein] 4B and 9B, Z-Image (Turbo) and Chroma exports, per
precision, from parameter counts: each model is built from its published configuration on
torch's meta device (no weights, no download) and its parameters counted.

    python benchmarks/flux2_memory.py          # the markdown table of docs/flux.md and docs/zimage.md

Configurations (published config.json values; the klein transformer's from
black-forest-labs/FLUX.2-klein-4B / -9B's transformer/config.json, Qwen3's from Qwen/Qwen3-4B
and Qwen/Qwen3-8B): klein runs Qwen3Model (no LM head) and reads hidden states 9, 18 and 27 of
its 36 layers, so its joint attention width is 3 x the Qwen3 hidden size. The VAE is
AutoencoderKLFlux2's default (FLUX.2's 32-channel VAE, shared by dev and klein).
Z-Image: ZImageTransformer2DModel's defaults (Tongyi-MAI/Z-Image-Turbo's transformer: dim 3840,
30 layers, 2 + 2 refiner layers, caption width 2560) and Qwen3-4B as its text encoder (the
pipeline reads hidden_states[-2]). Chroma: ChromaTransformer2DModel's defaults (lodestones'
Chroma1-HD: FLUX.1's 19 double and 38 single blocks, the distilled-guidance approximator) and
T5-XXL's encoder (google/t5-v1_1-xxl config.json). Both use FLUX.1's 16-channel VAE
(black-forest-labs/FLUX.1-dev vae/config.json).
"""

from __future__ import annotations

import torch

GIB = 2**30
#: Bytes a weight takes at each precision sdrt exports (int8: weight-only quantized matrices).
PRECISION_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1, "int4": 0.5}
#: The CPU machine the table answers for, and what is left for activations, the OS and Python.
MACHINE_GIB = 24
HEADROOM_GIB = 4
#: klein's hidden-state layers (Flux2KleinPipeline's text_encoder_out_layers).
KLEIN_LAYERS = 3

QWEN3 = {  # Qwen3-4B / Qwen3-8B config.json
    "4B": dict(
        hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True,
    ),
    "8B": dict(
        hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=False,
    ),
}  # fmt: skip
#: What `sdrt export --precision fp16 --weights int8` writes today: --weights quantizes the text
#: encoders only (sdrt.export.quantize.QUANTIZED_COMPONENTS), the VAE stays fp32 (--vae-precision).
EXPORTED_BYTES = {"transformer": 2, "text encoder": 1, "VAE": 4}
T5_XXL = dict(  # google/t5-v1_1-xxl config.json (the encoder only: T5EncoderModel)
    d_model=4096, d_ff=10240, d_kv=64, num_layers=24, num_heads=64, vocab_size=32128,
    feed_forward_proj="gated-gelu",
)  # fmt: skip
FLUX1_VAE = dict(  # black-forest-labs/FLUX.1-dev vae/config.json
    latent_channels=16, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)  # fmt: skip
KLEIN = {  # klein transformer/config.json: (transformer, its Qwen3)
    "klein 4B": (dict(num_layers=5, num_single_layers=20, num_attention_heads=24), "4B"),
    "klein 9B": (dict(num_layers=8, num_single_layers=24, num_attention_heads=32), "8B"),
}


def count(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def parameter_counts() -> dict[str, dict[str, int]]:
    import diffusers
    from transformers import Qwen3Config, Qwen3Model, T5Config, T5EncoderModel

    counts = {}
    with torch.device("meta"):
        flux1_vae = count(diffusers.AutoencoderKL(**FLUX1_VAE))
        counts["Z-Image"] = {
            "transformer": count(diffusers.ZImageTransformer2DModel()),
            "text encoder (Qwen3-4B)": count(Qwen3Model(Qwen3Config(**QWEN3["4B"]))),
            "VAE": flux1_vae,
        }
        counts["Chroma"] = {
            "transformer": count(diffusers.ChromaTransformer2DModel()),
            "text encoder (T5-XXL)": count(T5EncoderModel(T5Config(**T5_XXL))),
            "VAE": flux1_vae,
        }
        vae = count(diffusers.AutoencoderKLFlux2())
        for name, (shape, qwen) in KLEIN.items():
            config = QWEN3[qwen]
            transformer = diffusers.Flux2Transformer2DModel(
                joint_attention_dim=KLEIN_LAYERS * config["hidden_size"], guidance_embeds=False, **shape
            )
            counts[name] = {
                "transformer": count(transformer),
                f"text encoder (Qwen3-{qwen})": count(Qwen3Model(Qwen3Config(**config))),
                "VAE": vae,
            }
    return counts


def table(counts: dict[str, dict[str, int]]) -> str:
    columns = list(PRECISION_BYTES)
    lines = [
        "| model | component | parameters | "
        + " | ".join(f"{p} GiB" for p in columns)
        + " | fp16 + `--weights int8` GiB |",
        "|---|---|---:|" + "---:|" * (len(columns) + 1),
    ]
    for model, parts in counts.items():
        exported = 0.0
        for part, n in parts.items():
            sizes = " | ".join(f"{n * PRECISION_BYTES[p] / GIB:.1f}" for p in columns)
            own = n * next(b for name, b in EXPORTED_BYTES.items() if part.startswith(name)) / GIB
            exported += own
            lines.append(f"| {model} | {part} | {n / 1e9:.2f} B | {sizes} | {own:.1f} |")
        total = sum(parts.values())
        sizes = [fitting(total * PRECISION_BYTES[p] / GIB) for p in columns] + [fitting(exported)]
        lines.append(f"| {model} | **all** | {total / 1e9:.2f} B | " + " | ".join(sizes) + " |")
    return "\n".join(lines)


def fitting(gib: float) -> str:
    return f"**{gib:.1f}** ({'fits' if gib <= MACHINE_GIB - HEADROOM_GIB else 'no'})"


if __name__ == "__main__":
    print(table(parameter_counts()))
