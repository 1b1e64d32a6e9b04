"""A few-layer SD3.5 Medium transformer at full width (random weights), exported as sdrt exports
the transformer (sdrt.export.sd3.Sd3Transformer traced by sdrt.export.streamed_trace) and also with
sdrt.export.dit_cpu_fusions: a proxy for A/B runs of the transformer's blocks (benchmarks/dit_ab.py)
that needs about 4 GiB instead of 13, for when the full model cannot be loaded.

    python benchmarks/dit_mini.py --out /tmp/dit-mini --layers 4 --dual 2
    python benchmarks/dit_ab.py --variant graph=/tmp/dit-mini/plain/model.onnx \
        --variant graph=/tmp/dit-mini/fused/model.onnx --rounds 3 --calls 1 --no-spinning

The configuration is SD3.5 Medium's (the `sdrt bench --arch sd35-medium` diffusers folder's
transformer config) with `--layers` layers, the first `--dual` of them MMDiT-X dual-attention
layers (SD3.5 Medium: 13 of 24).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

ARCH_TRANSFORMER = Path.home() / ".cache" / "sdrt" / "arch" / "sd35-medium-diffusers" / "transformer"
#: Random weights' spread: a trained transformer's linear weights are of this order, and unlike
#: diffusers' zero-initialised AdaLN and output layers it gives every block a non-zero output.
WEIGHT_STD = 0.02
TRACE_SIDE, TRACE_TEXT, SEED = 16, 90, 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=ARCH_TRANSFORMER / "config.json")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--dual", type=int, default=2)
    arguments = parser.parse_args()

    import torch
    from diffusers import SD3Transformer2DModel

    from sdrt.export.components import ComponentExport
    from sdrt.export.dit_cpu_fusions import fuse_file
    from sdrt.export.sd3 import Sd3Transformer
    from sdrt.export.streamed_trace import export_streamed
    from sdrt.runtime.manifest import TensorSpec

    config = {k: v for k, v in json.loads(arguments.config.read_text()).items() if not k.startswith("_")}
    config.update(num_layers=arguments.layers, dual_attention_layers=list(range(arguments.dual)))
    torch.manual_seed(SEED)
    model = SD3Transformer2DModel(**config).eval()
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=WEIGHT_STD)
    model.save_pretrained(arguments.out / "diffusers" / "transformer")
    f32, channels = "float32", config["in_channels"]
    component = ComponentExport(
        "transformer",
        Sd3Transformer(model),
        [
            TensorSpec("hidden_states", f32, ["batch", channels, "height", "width"]),
            TensorSpec("timestep", f32, ["timestep_batch"]),
            TensorSpec("encoder_hidden_states", f32, ["batch", "text", config["joint_attention_dim"]]),
            TensorSpec("pooled_projections", f32, ["batch", config["pooled_projection_dim"]]),
            TensorSpec("skip_layers", f32, [arguments.layers]),
        ],
        [TensorSpec("out_sample", f32, ["batch", config["out_channels"], "height", "width"])],
        None,
    )
    example = (
        torch.randn(2, channels, TRACE_SIDE, TRACE_SIDE).numpy(),
        torch.tensor([500.0, 500.0]).numpy(),
        torch.randn(2, TRACE_TEXT, config["joint_attention_dim"]).numpy(),
        torch.randn(2, config["pooled_projection_dim"]).numpy(),
        torch.zeros(arguments.layers).numpy(),
    )
    plain, fused = arguments.out / "plain", arguments.out / "fused"
    plain.mkdir(parents=True, exist_ok=True)
    fused.mkdir(parents=True, exist_ok=True)
    export_streamed(component, plain / "model.onnx", example)
    data = fused / "model.onnx.data"
    if data.exists():
        data.unlink()
    os.link(plain / "model.onnx.data", data)  # the same weights, no second copy
    print(fuse_file(plain / "model.onnx", fused / "model.onnx"))


if __name__ == "__main__":
    main()
