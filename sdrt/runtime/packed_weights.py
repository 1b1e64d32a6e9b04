"""A MatMul weight as ONNX Runtime's `MatMulNBits` holds it (`sdrt export --weights`): N rows
(output features) of ceil(K / block) blocks, each block one fp32 scale and `block` codes of
`bits` bits packed low bits first, symmetric (zero point 2^(bits-1)).

`unpack` reads the weight [K, N] back as the kernel computes with it; `pack` quantizes one with
ONNX Runtime's own blockwise quantizer, the function `sdrt export` uses (through
onnxruntime.quantization's MatMulNBitsQuantizer), so a LoRA merged at load time
(sdrt.runtime.features.lora.merge) is packed exactly as the export packs a weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BITS_PER_BYTE = 8


@dataclass(frozen=True)
class PackedLayout:
    """One MatMulNBits weight: its initializers and shape (the node's K, N, bits, block_size)."""

    codes: str  # the packed initializer, uint8 [N, blocks, block * bits / 8]
    scales: str  # fp32 [N, blocks] (or flat)
    k: int
    n: int
    bits: int
    block_size: int

    @property
    def blocks(self) -> int:
        return -(-self.k // self.block_size)


def unpack(layout: PackedLayout, codes: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(weight [K, N] as the kernel sees it, its step |scale| per weight)."""
    per_byte = BITS_PER_BYTE // layout.bits
    shifts = np.arange(per_byte, dtype=np.uint8) * layout.bits
    values = ((codes[..., None] >> shifts) & ((1 << layout.bits) - 1)).reshape(layout.n, layout.blocks, -1)
    scale = scales.reshape(layout.n, layout.blocks, 1).astype(np.float32)
    weight = (values.astype(np.float32) - (1 << (layout.bits - 1))) * scale
    step = np.broadcast_to(np.abs(scale), weight.shape)
    return weight.reshape(layout.n, -1)[:, : layout.k].T, step.reshape(layout.n, -1)[:, : layout.k].T


def pack(layout: PackedLayout, weight: np.ndarray, codes_shape: tuple[int, ...], scales_shape: tuple[int, ...]):
    """(codes, scales) of `weight` [K, N], in the initializers' stored shapes."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    quantizers = {4: quantize_matmul_4bits, 8: quantize_matmul_8bits}
    if weight.shape != (layout.k, layout.n) or layout.bits not in quantizers:
        raise ValueError(f"cannot pack a {list(weight.shape)} weight as {layout}")
    padded = np.zeros((layout.blocks * layout.block_size, layout.n), np.float32)
    padded[: layout.k] = weight
    codes = np.zeros((layout.n, layout.blocks, layout.block_size * layout.bits // BITS_PER_BYTE), np.uint8)
    scales = np.zeros((layout.n, layout.blocks), np.float32)
    zero_points = np.zeros((layout.n, -(-layout.blocks * layout.bits // BITS_PER_BYTE)), np.uint8)  # unused
    symmetric = True
    quantizers[layout.bits](codes, padded, scales, zero_points, layout.block_size, layout.n, layout.k, symmetric)
    return codes.reshape(codes_shape), scales.reshape(scales_shape)
