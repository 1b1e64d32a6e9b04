"""What a benchmark report says of the machine and the model: the CPU, versions, the BLAS
matmul rate, the UNet's FLOPs per call (counted by PyTorch on the meta device) and the model's hash."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sdrt import __version__
from sdrt.runtime.manifest import ADDED_CONDITIONS, UNET, Manifest

if TYPE_CHECKING:
    from sdrt.benchmark import BenchSettings

MATMUL_SIZE = 2048
MATMUL_REPEATS = 5
# Flops of a multiply-add, for GFLOP/s from a count of multiply-accumulates.
FLOPS_PER_MAC = 2


def matmul_gflops() -> float:
    """This machine's float32 matrix multiply rate through NumPy's BLAS (median of repeats)."""
    a = np.random.default_rng(0).standard_normal((MATMUL_SIZE, MATMUL_SIZE)).astype(np.float32)
    a @ a  # warm up
    times = []
    for _ in range(MATMUL_REPEATS):
        started = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - started)
    return FLOPS_PER_MAC * MATMUL_SIZE**3 / statistics.median(times) / 1e9


def unet_gflop_per_call(diffusers_model: str | None, manifest: Manifest, settings: BenchSettings) -> float | None:
    """FLOPs of one UNet call at these settings, counted by PyTorch's FlopCounterMode on the
    meta device (no weights needed); None without torch/diffusers or the model's configs."""
    if diffusers_model is None or not (Path(diffusers_model) / "unet" / "config.json").is_file():
        return None
    try:
        import torch
        from diffusers import UNet2DConditionModel
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:
        return None
    config = UNet2DConditionModel.load_config(Path(diffusers_model) / "unet")
    batch = settings.num_images * (2 if settings.guidance > 1 else 1)
    scale = manifest.vae_scale_factor
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
        sample = torch.zeros(batch, manifest.unet_in_channels, settings.height // scale, settings.width // scale)
        context = torch.zeros(batch, manifest.text_length, manifest.text_hidden_size)
        added = {
            t.name: torch.zeros(batch, *t.shape[1:])
            for t in manifest.components[UNET].inputs
            if t.name in ADDED_CONDITIONS
        }  # SDXL's
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            unet(sample, torch.zeros(batch), context, added_cond_kwargs=added or None)
    return counter.get_total_flops() / 1e9


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def versions(compare: bool, openvino: bool = False) -> dict:
    import onnxruntime

    found = {"sdrt": __version__, "numpy": np.__version__, "onnxruntime": onnxruntime.__version__}
    if compare:
        import diffusers
        import torch

        found.update(torch=torch.__version__, diffusers=diffusers.__version__)
    if openvino:
        import openvino as ov

        found["openvino"] = ov.__version__
    return found


def model_hash(manifest: Manifest) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(manifest.components):
        digest.update(manifest.components[name].sha256.encode())
    return digest.hexdigest()[:16]
