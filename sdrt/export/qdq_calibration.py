"""The inputs a Q/DQ export calibrates on (`sdrt export --qdq`): the denoiser's feeds recorded
while sdrt's own runtime denoises a few prompts on the fp32 export, every step of each run, as
NVIDIA's diffusion quantization examples calibrate (the pipeline run over calibration prompts,
each step's backbone inputs seen by the quantizers)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

#: Prompts of varied content, in order; `--qdq-prompts N` takes the first N, and the one after
#: them is held out for the check against the fp32 graph (sdrt.export.qdq).
CALIBRATION_PROMPTS = (
    "a photograph of an astronaut riding a horse on the moon",
    "a watercolor painting of a lighthouse on a cliff at sunset",
    "a close-up portrait of an old fisherman, dramatic lighting",
    "a bowl of fruit on a wooden table, still life, oil painting",
    "a futuristic city street at night in the rain, neon signs",
    "a red fox in a snowy forest, wildlife photography",
    "an isometric illustration of a cozy library with plants",
    "a mountain lake with pine trees and morning fog",
)
#: Denoising steps per calibration prompt: the 20 NVIDIA's diffusion quantization examples
#: calibrate with (num_inference_steps=20), so the quantizers see the whole noise range.
CALIBRATION_STEPS = 20
#: Seed of the calibration runs: the same export calibrates the same way every time.
CALIBRATION_SEED = 0


class _Recorder:
    """Stands in for an engine: runs it and keeps a copy of every call's feeds."""

    def __init__(self, engine, calls: list[dict[str, np.ndarray]]):
        self._engine, self._calls = engine, calls

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._calls.append({name: np.array(value, copy=True) for name, value in feeds.items()})
        return self._engine.run(feeds)

    def __getattr__(self, name):
        return getattr(self._engine, name)


def record_denoiser_inputs(
    folder: Path, prompts: list[str], steps: int = CALIBRATION_STEPS, progress: Callable[[str], None] = print
) -> tuple[str, list[list[dict[str, np.ndarray]]]]:
    """(the denoiser's component, per prompt the feeds of each of its calls) from text-to-image
    runs on the export in `folder` through sdrt's runtime on ONNX Runtime's CPU kernels."""
    from sdrt.runtime.pipeline import Pipeline

    pipeline = Pipeline.load(folder, backend="cpu")
    component = pipeline.manifest.model_family.denoiser.component
    engine = pipeline.engines[component]
    runs = []
    try:
        for index, prompt in enumerate(prompts):
            calls: list[dict[str, np.ndarray]] = []
            pipeline.engines[component] = _Recorder(engine, calls)
            pipeline.generate(prompt, steps=steps, seed=CALIBRATION_SEED + index)
            runs.append(calls)
            progress(f"{component}: calibration prompt {index + 1}/{len(prompts)}: {len(calls)} calls recorded")
    finally:
        pipeline.engines[component] = engine
    return component, runs


def recorded_reader(calls: list[dict[str, np.ndarray]], input_types: dict[str, np.dtype]):
    """ONNX Runtime's CalibrationDataReader over recorded feeds, cast to the graph's input types."""
    from onnxruntime.quantization import CalibrationDataReader

    class RecordedReader(CalibrationDataReader):
        def __init__(self):
            self._calls = iter(calls)

        def get_next(self) -> dict[str, np.ndarray] | None:
            feeds = next(self._calls, None)
            if feeds is None:
                return None
            return {name: value.astype(input_types[name]) for name, value in feeds.items() if name in input_types}

    return RecordedReader()
