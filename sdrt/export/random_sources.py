"""The random-weight models `sdrt export --random NAME` (and `sdrt bench --arch`) start from:
one registry of names, each built once into the cache as a diffusers folder and reused."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sdrt.errors import ConfigError


def _sd(size: str) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        from sdrt.export.random_model import save_random_pipeline

        return save_random_pipeline(folder, size=size, kind="standard", seed=0)

    return build


def _sdxl(size: str) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        from sdrt.export.random_sdxl import save_random_sdxl

        return save_random_sdxl(folder, size=size, kind="base", seed=0)

    return build


def _flux(kind: str) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        from sdrt.export.random_flux import save_random_flux

        return save_random_flux(folder, kind=kind, seed=0)

    return build


def _sd3(kind: str) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        from sdrt.export.random_sd3 import save_random_sd3

        return save_random_sd3(folder, kind=kind, seed=0)

    return build


def _sd35_medium(folder: Path) -> Path:
    from sdrt.export.random_sd35 import save_sd35_medium

    return save_sd35_medium(folder, size="full", seed=0)


def _chroma(folder: Path) -> Path:
    from sdrt.export.random_chroma import save_random_chroma

    return save_random_chroma(folder, seed=0)


def _flux2_klein(kind: str) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        from sdrt.export.random_flux2 import save_random_flux2_klein

        return save_random_flux2_klein(folder, kind=kind, seed=0)

    return build


def _zimage(folder: Path) -> Path:
    from sdrt.export.random_zimage import save_random_zimage

    return save_random_zimage(folder, seed=0)


#: Name -> (what it is, builder). The full-size ones have real architectures for benchmarks.
RANDOM_MODELS: dict[str, tuple[str, Callable[[Path], Path]]] = {
    "tiny": ("a tiny SD 1.x (seconds to build and run; for trying the whole path)", _sd("tiny")),
    "sd15": ("SD 1.5's full-size architecture (benchmarks; about 4 GB)", _sd("sd15")),
    "tiny-sdxl": ("a tiny SDXL base", _sdxl("tiny")),
    "sdxl": ("SDXL 1.0 base's full-size architecture (benchmarks; about 14 GB)", _sdxl("full")),
    "tiny-flux": ("a tiny FLUX.1 dev (guidance-distilled)", _flux("dev")),
    "tiny-flux-schnell": ("a tiny FLUX.1 schnell", _flux("schnell")),
    "tiny-flux-fill": ("a tiny FLUX.1 Fill (mask and masked image as extra channels)", _flux("fill")),
    "tiny-flux-kontext": ("a tiny FLUX.1 Kontext (edits a reference image)", _flux("kontext")),
    "tiny-sd3": ("a tiny SD3.5-Medium-shaped model (MMDiT-X) with T5", _sd3("t5")),
    "tiny-sd3-no-t5": ("a tiny SD3.5-Medium-shaped model without T5", _sd3("no-t5")),
    "tiny-chroma": ("a tiny Chroma (T5 only, real CFG)", _chroma),
    "sd35-medium": ("SD3.5 Medium's full-size architecture without T5 (benchmarks; about 13 GB)", _sd35_medium),
    "tiny-flux2-klein": ("a tiny FLUX.2 [klein] (distilled: no CFG)", _flux2_klein("distilled")),
    "tiny-flux2-klein-base": ("a tiny FLUX.2 [klein] base (real CFG)", _flux2_klein("base")),
    "tiny-zimage": ("a tiny Z-Image Turbo (Qwen3 text encoder, single-stream DiT)", _zimage),
}


def random_source(name: str, root: Path, progress: Callable[[str], None] = lambda line: None) -> Path:
    """The diffusers folder of random model `name` under `root`, built on first use."""
    if name not in RANDOM_MODELS:
        raise ConfigError(f"unknown random model {name!r}; choose one of {', '.join(RANDOM_MODELS)}")
    folder = Path(root) / f"{name}-diffusers"
    if not (folder / "model_index.json").is_file():
        progress(f"building a random-weight {name} model ({RANDOM_MODELS[name][0]}) in {folder} (once)")
        folder.parent.mkdir(parents=True, exist_ok=True)
        RANDOM_MODELS[name][1](folder)
    return folder
