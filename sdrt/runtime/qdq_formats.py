"""Q/DQ engines as a manifest records them: the `sdrt export --qdq` formats (the one list), the
GPUs that build them, and what the export did to its denoiser (docs/quantization.md)."""

from __future__ import annotations

from dataclasses import dataclass

#: `sdrt export --qdq` choices: name -> the ONNX element type its QuantizeLinear outputs (opset 19).
QDQ_FORMATS = {"int8": "int8", "fp8": "float8_e4m3fn"}
#: The oldest GPU TensorRT builds FP8 for: compute capability 8.9 (Ada; Hopper is 9.0). TensorRT's
#: support matrix lists FP8 from SM 8.9 on; older GPUs have no FP8 tensor cores.
FP8_MIN_COMPUTE_CAPABILITY = (8, 9)
#: Prompts the denoiser's inputs are recorded from, unless asked (`--qdq-prompts`).
DEFAULT_QDQ_PROMPTS = 4


@dataclass(frozen=True)
class QdqQuantization:
    """What `sdrt export --qdq` did to a component (sdrt.export.qdq): Q/DQ pairs on the inputs
    of its convolutions and weight MatMuls/Gemms, the scales from calibration on recorded inputs,
    and its errors against the fp32 graph on other recorded inputs."""

    qdq: str  # int8 / fp8
    calibration_method: str  # ONNX Runtime's CalibrationMethod: MinMax (int8) or Distribution (fp8)
    calibration_prompts: int
    calibration_samples: int  # denoiser calls recorded
    nodes_quantized: int  # Conv / MatMul / Gemm with Q/DQ on their inputs
    nodes_kept: int  # attention's activation x activation MatMuls and the layers kept in fp32
    max_abs_error: float  # the Q/DQ graph against the fp32 graph (ONNX Runtime CPU)
    rms_rel_error: float  # ||Q/DQ - fp32|| / ||fp32|| over the held-out samples
    error_bound: float  # the bound that error is checked against (sdrt.export.qdq_checks)


def fp8_supported(compute_capability: str) -> bool:
    """Whether a GPU of this compute capability ("8.6", "9.0") builds FP8 engines."""
    major, minor = (int(part) for part in compute_capability.split(".")[:2])
    return (major, minor) >= FP8_MIN_COMPUTE_CAPABILITY
