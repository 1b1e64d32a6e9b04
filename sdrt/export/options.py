"""`sdrt export`'s options (ExportOptions): precisions, target, optimization, prompt length,
extra graphs (tiny VAE, DeepCache) and quantized weights, each checked when made."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sdrt.export import onnx_graph
from sdrt.export.qdq import check_qdq
from sdrt.export.quantize import QUANTIZED_COMPONENTS, check_weights
from sdrt.export.staging import ExportError
from sdrt.runtime.manifest import DEFAULT_PROMPT_CHUNKS, DEFAULT_WEIGHT_BLOCK
from sdrt.runtime.qdq_formats import DEFAULT_QDQ_PROMPTS

#: Whether the UNet's attention is fused when `sdrt export` is not told (--[no-]fused-attention),
#: for fp32 exports without --weights (fp16's conversion cannot type com.microsoft operators).
#: CPU: yes; SD 1.5's UNet at 512x512 peaks at 0.49x the plain graph's memory at the same
#: speed (docs/benchmarks/cpu-sd15-512-ort-profile.json). CUDA: no (--optimize fuses there).
FUSED_ATTENTION_BY_TARGET = {"cpu": True, "cuda": False}

if TYPE_CHECKING:
    from sdrt.export.components import ComponentExport


@dataclass(frozen=True)
class ExportOptions:
    """How to export: precision of the UNet and text encoder, of the VAE (fp32 unless asked:
    the fp16 VAE is known to overflow into NaN/black images), the target execution provider
    and whether to apply that target's offline graph optimizations."""

    precision: str = "fp32"
    vae_precision: str = "fp32"
    target: str = "cpu"
    optimize: bool = False
    max_prompt_chunks: int = DEFAULT_PROMPT_CHUNKS  # the UNet's longest text context, in encoder lengths
    tiny_vae: str | None = None  # an AutoencoderTiny (folder or hub id) to export beside the VAE
    deepcache: bool = False  # also the graphs DeepCache needs (sdrt.export.deepcache)
    cache_graphs: bool = False  # FLUX.1: also the transformer in parts, for the step caches (sdrt.export.flux_cache)
    t5_precision: str | None = None  # FLUX's T5: fp32 unless asked (it overflows in fp16)
    no_t5: bool = False  # SD3: export without T5 (the runtime feeds zeros in its place)
    weights: str | None = None  # int8 / int4: MatMul weights quantized (sdrt.export.quantize)
    weight_block: int = DEFAULT_WEIGHT_BLOCK  # weights per quantization scale
    # The UNet's attention as ORT's MultiHeadAttention (onnx_graph); None: the target's default
    # (FUSED_ATTENTION_BY_TARGET), resolved when made. Asked for (True), also SD3's transformer's
    # norms and GELUs as ORT's fused operators (dit_cpu_fusions), which OpenVINO and TensorRT lack.
    fused_attention: bool | None = None
    qdq: str | None = None  # int8 / fp8: the denoiser as a Q/DQ graph for TensorRT (sdrt.export.qdq)
    qdq_prompts: int = DEFAULT_QDQ_PROMPTS  # prompts whose denoising calibrates the Q/DQ scales
    #: Whether fused_attention came from the target's default rather than being asked for.
    fused_by_default: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self):
        onnx_graph.check_choice("precision", self.precision, onnx_graph.PRECISIONS)
        if self.t5_precision is not None:
            onnx_graph.check_choice("T5 precision", self.t5_precision, onnx_graph.PRECISIONS)
        onnx_graph.check_choice("VAE precision", self.vae_precision, onnx_graph.PRECISIONS)
        onnx_graph.check_choice("target", self.target, onnx_graph.TARGETS)
        if not isinstance(self.max_prompt_chunks, int) or self.max_prompt_chunks < 1:
            raise ExportError(f"max_prompt_chunks must be a positive integer, got {self.max_prompt_chunks!r}")
        check_weights(self.weights, self.weight_block, self.precision, self.target)
        if self.fused_attention is None:  # the measured case only: fp32, unquantized
            plain_fp32 = self.precision == "fp32" and self.weights is None and self.qdq is None
            object.__setattr__(self, "fused_attention", FUSED_ATTENTION_BY_TARGET[self.target] and plain_fp32)
            object.__setattr__(self, "fused_by_default", True)
        check_qdq(self.qdq, self.qdq_prompts, self.weights, self.precision, self.optimize or self.fused_attention)
        if self.fused_attention and self.target != "cpu":
            raise ExportError("fused_attention is for --target cpu (--optimize fuses attention for CUDA)")
        elif self.fused_attention and self.precision != "fp32":
            raise ExportError("fused_attention needs --precision fp32 (the fp16 conversion cannot type its operator)")

    def fuses_attention(self, component: str) -> bool:
        return bool(self.fused_attention) and component in onnx_graph.CPU_FUSED_COMPONENTS

    def fuses_operators(self, component: ComponentExport) -> bool:
        """The component's graph gets sdrt.export.dit_cpu_fusions: asked for only (not the CPU
        default: OpenVINO and TensorRT read the same export), fp32 only (ONNX Runtime's CPU
        kernels for them are float32)."""
        asked = bool(self.fused_attention) and not self.fused_by_default
        return asked and component.cpu_fusions and self.precision_of(component.name) == "fp32"

    def quantizes(self, component: str) -> bool:
        return self.weights is not None and component in QUANTIZED_COMPONENTS

    def precision_of(self, component: str) -> str:
        return self.vae_precision if component.startswith("vae") else self.precision
