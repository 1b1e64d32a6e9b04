"""Quantized weights as a manifest records them: the `sdrt export --weights` formats and block
sizes (the one list), and what the export did to a component (docs/quantization.md)."""

from __future__ import annotations

from dataclasses import dataclass

#: `sdrt export --weights` choices: name -> bits per weight (the one list; sdrt.export.quantize).
WEIGHT_FORMATS = {"int8": 8, "int4": 4}
#: Weights per quantization scale: MLAS's MatMulNBits kernels take 16..256 in powers of two. 32
#: costs one fp32 scale per 32 weights (1 bit per weight on 4 or 8) and tracks the weights
#: more closely than larger blocks; it is also the quantizer's own default.
WEIGHT_BLOCKS = (16, 32, 64, 128, 256)
DEFAULT_WEIGHT_BLOCK = 32


@dataclass(frozen=True)
class WeightQuantization:
    """What `sdrt export --weights` did to a component (sdrt.export.quantize): its MatMul weights
    as ONNX Runtime MatMulNBits, and the errors that measured (docs/quantization.md)."""

    weights: str  # int8 / int4
    bits: int
    block_size: int  # weights per scale, along the MatMul's input dimension
    symmetric: bool
    matmuls_quantized: int
    matmuls_kept: int  # MatMuls of two activations (attention) have no weight to quantize
    max_abs_error: float  # the graph's output against PyTorch's fp32 module
    max_rel_error: float
    max_weight_error_steps: float  # largest |W' - W| in quantization steps (at most 1)
    max_layer_rel_error: float  # worst layer's ||W' - W|| / ||W||
    estimated_output_rel_error: float  # those layer errors added in quadrature
