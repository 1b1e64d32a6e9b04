"""What `sdrt bench --compare` runs beside sdrt, each in its own worker taking turns with it.

diffusers: the same model in diffusers + torch (its folder). openvino: sdrt's own loop on the same
exported ONNX graphs through OpenVINO's CPU plugin (sdrt.runtime.engines.openvino), which is how
"the best CPU engine" is compared without a second export: the images are the loop's own, only
the engine differs. One name per baseline here is the list `--compare` accepts.
"""

from __future__ import annotations

from dataclasses import dataclass

from sdrt.benchmark.driver import BenchError


@dataclass(frozen=True)
class Baseline:
    name: str
    worker: str  # the worker kind (sdrt.benchmark.worker): "sdrt" or "diffusers"
    backend: str | None  # the engine it runs on; None: the backend sdrt itself is measured on
    needs: str  # the extra it imports, for the one-line error


BASELINES = {
    "diffusers": Baseline("diffusers", "diffusers", None, "export"),
    "openvino": Baseline("openvino", "sdrt", "openvino", "openvino"),
}
#: The CPU engine an OpenVINO baseline is measured against (OpenVINO beside itself says nothing).
OPENVINO_BESIDE = "cpu"


def parse_baselines(compare) -> tuple[Baseline, ...]:
    """`compare` as run_benchmark takes it (None, one name, or names) as Baselines, checked."""
    names = () if compare is None else (compare,) if isinstance(compare, str) else tuple(compare)
    unknown = [name for name in names if name not in BASELINES]
    if unknown:
        raise BenchError(f"unknown baseline {unknown[0]!r}; choose from {', '.join(BASELINES)}")
    return tuple(BASELINES[name] for name in dict.fromkeys(names))


def check_openvino(backend: str) -> None:
    if backend != OPENVINO_BESIDE:
        raise BenchError(f"--compare openvino runs beside --backend {OPENVINO_BESIDE} (not {backend})")
    try:
        import openvino  # noqa: F401
    except ImportError:
        raise BenchError("--compare openvino needs OpenVINO: pip install 'sdrt[openvino]'") from None


def summarize_pairs(ours: list[dict], theirs: list[dict], summarize) -> dict:
    """Their end-to-end time over ours, run by run (pairs of the same turn), with the spread."""
    pairs = [b["end_to_end"] / a["end_to_end"] for a, b in zip(ours, theirs)]
    return {"pairs": pairs, **summarize(pairs)}
