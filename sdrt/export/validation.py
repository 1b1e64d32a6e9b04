"""Each exported graph against its PyTorch module: the module's outputs on seeded inputs at two
shapes are computed first (`reference_cases`), so the module's weights can be released before
the graph is converted and run in ONNX Runtime (`validate`): a model as large as SDXL's UNet
then never has its PyTorch and ONNX copies in memory together."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdrt.export.components import ComponentExport, ModelGeometry
from sdrt.runtime.engines.onnxruntime import ORT_ERRORS_ONLY

ORT_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}
# Export fails when an engine's output differs from its PyTorch module by more than this
# (max |diff| / max |reference|, worst output and shape). fp32: ONNX Runtime and PyTorch sum a
# convolution's K products in different orders, each order within K * 2**-24 of the sum of
# their magnitudes; the VAE's widest convolutions have K = 512 * 9 = 4608 (2.7e-4), and random
# weights leave outputs smaller than those magnitudes (SDXL's VAE decoder at 1024x1024 showed
# 1.3e-4). A real defect (a wrong operator or weight) is off by 1e-1 or more. fp16 keeps an
# 11-bit mantissa and its error grows with depth: SDXL's full-size UNet showed 7.9e-3.
RELATIVE_TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2}
VALIDATION_SEED = 0
CPU_PROVIDER = "CPUExecutionProvider"


@dataclass
class Case:
    inputs: list[np.ndarray]
    outputs: list[np.ndarray]


def validation_shapes(geometry: ModelGeometry) -> list[tuple[int, int, int]]:
    """(batch, latent height, latent width): native square at batch 1, then batch 2 at a
    non-square half size (3:2), which bounds memory: SD 1.5's fp32 VAE at batch 2 and full
    size pushed a CPU export past 23 GB."""
    native, multiple = geometry.native_latent_size, geometry.unet_size_multiple

    def fit(size: int) -> int:
        return max(multiple, size - size % multiple)

    half = fit(native // 2)
    return [(1, native, native), (2, half, fit(half * 3 // 2) if fit(half * 3 // 2) != half else half + multiple)]


def reference_cases(component: ComponentExport, geometry: ModelGeometry) -> list[Case]:
    """The module's outputs on seeded inputs at the validation shapes (the first is also the
    example the exporter traces)."""
    import torch

    generator = torch.Generator().manual_seed(VALIDATION_SEED)
    cases = []
    for batch, latent_h, latent_w in validation_shapes(geometry):
        inputs = component.make_inputs(generator, batch, latent_h, latent_w)
        with torch.no_grad():
            expected = component.module.eval()(*inputs)
        expected = expected if isinstance(expected, tuple) else (expected,)
        cases.append(Case([t.numpy() for t in inputs], [t.numpy() for t in expected]))
    return cases


def validate(
    component: ComponentExport, onnx_path: Path, cases: list[Case], precision: str, provider: str = CPU_PROVIDER
) -> dict:
    """Run the graph in ONNX Runtime on the cases' inputs (cast to the graph's dtypes) and
    measure its errors against their outputs in float32."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if component.defaults:  # inputs with defaults are by design: no warning about them
        options.log_severity_level = ORT_ERRORS_ONLY
    session = ort.InferenceSession(str(onnx_path), options, providers=[provider])
    inputs = list(session.get_inputs()) + list(session.get_overridable_initializers())  # with defaults too
    graph_types = {i.name: ORT_TO_NUMPY[i.type] for i in inputs}
    tolerance = RELATIVE_TOLERANCE[precision]
    worst = {"max_abs_error": 0.0, "max_rel_error": 0.0}
    for case in cases:
        feeds = {spec.name: array.astype(graph_types[spec.name]) for spec, array in zip(component.inputs, case.inputs)}
        got = session.run([spec.name for spec in component.outputs], feeds)
        for reference, output in zip(case.outputs, got):
            abs_error = float(np.abs(output.astype(np.float32) - reference).max())
            rel_error = abs_error / max(float(np.abs(reference).max()), 1e-30)
            worst["max_abs_error"] = max(worst["max_abs_error"], abs_error)
            worst["max_rel_error"] = max(worst["max_rel_error"], rel_error)
    passed = bool(worst["max_rel_error"] <= tolerance)  # False for NaN too
    worst.update(
        shapes=[list(case.inputs[0].shape) for case in cases], tolerance=tolerance, passed=passed, provider=provider
    )
    return worst
