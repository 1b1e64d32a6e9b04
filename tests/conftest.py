"""Shared fixtures: the real CLIP tokenizer and tiny random-weight pipelines built with diffusers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from sdrt.export.random_model import KINDS, SD15_PRESET

DATA_DIR = Path(__file__).parent / "data"


# ONNX Runtime's threads sleep rather than spin between parallel work: the same numbers, about a
# fifth less CPU for the suite's tiny models (sdrt.runtime.engines.onnxruntime.SPINNING_ENV).
os.environ.setdefault("SDRT_ORT_SPINNING", "0")
# PyTorch (the reference pipelines, every export's trace and validation) on one thread: its OpenMP
# threads spin while they wait, which on tiny models costs more CPU than their parallel work saves
# (a tiny SD export: 11 s of CPU on two threads, 5 s on one, on a 2-core EPYC). Set before torch is
# imported, so subprocesses (the CLI, Ray's workers) inherit it; the numbers are float32 sums in
# another order, within every test's arithmetic bound.
os.environ.setdefault("OMP_NUM_THREADS", "1")
if "torch" in sys.modules:  # imported before this file (a plugin): the variable came too late
    sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """sdrt's caches (optimized ONNX Runtime graphs, benchmark models) go to a temporary
    folder, not the user's ~/.cache, and start empty."""
    import os

    previous = os.environ.get("SDRT_CACHE")
    os.environ["SDRT_CACHE"] = str(tmp_path_factory.mktemp("sdrt-cache"))
    yield Path(os.environ["SDRT_CACHE"])
    if previous is None:
        os.environ.pop("SDRT_CACHE", None)
    else:
        os.environ["SDRT_CACHE"] = previous


@pytest.fixture(scope="session", autouse=True)
def plain_attention_exports():
    """The suite's exports keep the UNet's attention as MatMul + Softmax unless a test asks for
    the fusion: fusing costs several CPU seconds per tiny UNet (onnxruntime.transformers'
    optimizer), and tests/export/test_fused_attention.py checks that the fused graph is the same.
    """
    from sdrt.export import options

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(options, "FUSED_ATTENTION_BY_TARGET", dict.fromkeys(options.FUSED_ATTENTION_BY_TARGET, False))
        yield


@pytest.fixture(scope="session")
def sd15_dir() -> Path:
    """The SD 1.5 preset: real configs and the real CLIP tokenizer, no weights."""
    return SD15_PRESET


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """One tiny random-weight pipeline per kind (standard, inpaint, v_prediction), saved in
    the diffusers folder layout. Built once per test session, in about a second each."""
    from sdrt.export.random_model import save_random_pipeline

    root = tmp_path_factory.mktemp("tiny-models")
    return {kind: save_random_pipeline(root / kind, size="tiny", kind=kind, seed=0) for kind in KINDS}


@pytest.fixture(scope="session")
def exported_tiny(tiny_models, tmp_path_factory):
    """Function kind -> folder of that tiny model exported to fp32 ONNX (once per session)."""
    return _exports(tiny_models, tmp_path_factory.mktemp("exported-tiny"), "standard")


def _exports(sources: dict[str, Path], root: Path, default: str):
    """Function kind -> `sources[kind]` exported to fp32 ONNX under `root`, on first use."""
    from sdrt.export.exporter import export_model

    folders: dict[str, Path] = {}

    def get(kind: str = default) -> Path:
        if kind not in folders:
            export_model(str(sources[kind]), root / kind, progress=lambda line: None)
            folders[kind] = root / kind
        return folders[kind]

    return get


@pytest.fixture(scope="session")
def tiny_controlnets(tiny_models, tmp_path_factory) -> dict[str, Path]:
    """Two tiny random ControlNets for the tiny SD model (`edges`, `depth`): name -> diffusers
    folder; their exports lie in the folders' parent's parent's `exported` (a --controlnet-dir)."""
    from sdrt.export.exporter import export_model
    from sdrt.export.random_model import TINY_CONDITIONING_EMBEDDING, save_random_controlnet

    root = tmp_path_factory.mktemp("controlnets")
    found = {}
    for name, seed in (("edges", 1), ("depth", 2)):
        folder = save_random_controlnet(
            root / "diffusers" / name,
            tiny_models["standard"],
            seed=seed,
            conditioning_embedding=TINY_CONDITIONING_EMBEDDING,
        )
        export_model(str(folder), root / "exported" / name, progress=lambda line: None)
        found[name] = folder
    return found


def reference_scheduler(name: str, config: dict):
    """The diffusers scheduler an sdrt sampler reproduces, built from the same config."""
    import diffusers

    from sdrt.runtime.schedulers import SAMPLERS

    sampler = SAMPLERS[name]
    return getattr(diffusers, sampler.reference_name).from_config({**config, **sampler.overrides})


def diffusers_pipeline(class_name: str, folder: Path):
    """The reference diffusers pipeline `class_name` for a model folder: no safety checker,
    no progress bar."""
    import diffusers

    pipeline = getattr(diffusers, class_name).from_pretrained(
        folder, safety_checker=None, requires_safety_checker=False
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> dict[str, Path]:
    """Tiny random SDXL pipelines (base, refiner, inpaint) as diffusers folders, once per session."""
    from sdrt.export.random_sdxl import SDXL_KINDS, save_random_sdxl

    root = tmp_path_factory.mktemp("tiny-sdxl")
    return {kind: save_random_sdxl(root / kind, size="tiny", kind=kind, seed=0) for kind in SDXL_KINDS}


@pytest.fixture(scope="session")
def exported_sdxl(tiny_sdxl, tmp_path_factory):
    """Function kind -> folder of that tiny SDXL model exported to fp32 ONNX (once per session)."""
    return _exports(tiny_sdxl, tmp_path_factory.mktemp("exported-sdxl"), "base")


def sdxl_reference(class_name: str, folder: Path):
    """A diffusers SDXL pipeline class for a folder: no watermark, no progress bar."""
    import diffusers

    pipeline = getattr(diffusers, class_name).from_pretrained(folder, add_watermarker=False)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="session")
def tiny_flux(tmp_path_factory) -> dict[str, Path]:
    """Tiny random FLUX.1 pipelines (dev, schnell) as diffusers folders, once per session."""
    from sdrt.export.random_flux import FLUX_KINDS, save_random_flux

    root = tmp_path_factory.mktemp("tiny-flux")
    return {kind: save_random_flux(root / kind, kind=kind, seed=0) for kind in FLUX_KINDS}


@pytest.fixture(scope="session")
def exported_flux(tiny_flux, tmp_path_factory):
    """Function kind -> folder of that tiny FLUX model exported to fp32 ONNX (once per session)."""
    return _exports(tiny_flux, tmp_path_factory.mktemp("exported-flux"), "dev")


@pytest.fixture(scope="session")
def exported_flux_fill(tmp_path_factory) -> dict[str, Path]:
    """A tiny random FLUX.1 Fill: {"source": its diffusers folder, "export": its fp32 ONNX export}, once."""
    from sdrt.export.exporter import export_model
    from sdrt.export.random_flux import save_random_flux

    root = tmp_path_factory.mktemp("tiny-flux-fill")
    source = save_random_flux(root / "fill", kind="fill", seed=0)
    export_model(str(source), root / "export", progress=lambda line: None)
    return {"source": source, "export": root / "export"}


@pytest.fixture(scope="session")
def exported_flux_kontext(exported_flux, tmp_path_factory) -> Path:
    """The tiny dev export as a FLUX.1 Kontext one: Kontext's transformer is dev's class and
    config (`sdrt export --random tiny-flux-kontext` builds the same weights), so the engines are
    dev's and the manifest says what a Kontext export's says (sdrt.export.flux: kontext, the
    image tokens' range doubled for the reference's)."""
    import dataclasses
    import shutil

    from sdrt.export.flux import KONTEXT_SEQUENCE_FACTOR
    from sdrt.runtime.manifest import IMAGE_TOKENS, Manifest

    folder = tmp_path_factory.mktemp("exported-flux-kontext") / "kontext"
    shutil.copytree(exported_flux("dev"), folder)
    manifest = Manifest.load(folder)
    tokens = manifest.dims[IMAGE_TOKENS]
    dims = {**manifest.dims, IMAGE_TOKENS: dataclasses.replace(tokens, max=tokens.max * KONTEXT_SEQUENCE_FACTOR)}
    flux = dataclasses.replace(manifest.flux, kontext=True)
    dataclasses.replace(manifest, dims=dims, flux=flux).save(folder)
    return folder


@pytest.fixture(scope="session")
def exported_flux_parts(tiny_flux, exported_flux, tmp_path_factory) -> Path:
    """The tiny dev export with the transformer also in parts, as `--cache-graphs` makes it (once)."""
    from tests.support.step_caches import add_cache_graphs

    return add_cache_graphs(tiny_flux["dev"], exported_flux("dev"), tmp_path_factory.mktemp("flux-parts") / "dev")


@pytest.fixture(scope="session")
def tiny_sd3(tmp_path_factory) -> Path:
    """A tiny random SD3.5-Medium-shaped pipeline with T5 as a diffusers folder, once per session."""
    from sdrt.export.random_sd3 import save_random_sd3

    return save_random_sd3(tmp_path_factory.mktemp("tiny-sd3") / "sd3", kind="t5", seed=0)


@pytest.fixture(scope="session")
def exported_sd3(tiny_sd3, tmp_path_factory):
    """Function kind -> tiny_sd3 exported to fp32 ONNX, "t5" with T5 and "no-t5" with --no-t5
    (each once per session)."""
    from sdrt.export.exporter import ExportOptions, export_model

    root = tmp_path_factory.mktemp("exported-sd3")
    folders: dict[str, Path] = {}

    def get(kind: str = "t5") -> Path:
        if kind not in folders:
            options = ExportOptions(no_t5=kind == "no-t5")
            export_model(str(tiny_sd3), root / kind, options=options, progress=lambda line: None)
            folders[kind] = root / kind
        return folders[kind]

    return get


def sd3_reference(class_name: str, folder: Path, t5: bool = True):
    """A diffusers SD3 pipeline class for a folder (text_encoder_3 None without T5), no progress bar."""
    import diffusers

    absent = {} if t5 else {"text_encoder_3": None, "tokenizer_3": None}
    pipeline = getattr(diffusers, class_name).from_pretrained(folder, **absent)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="session")
def tiny_chroma(tmp_path_factory) -> Path:
    """A tiny random ChromaPipeline as a diffusers folder, once per session."""
    from sdrt.export.random_chroma import save_random_chroma

    return save_random_chroma(tmp_path_factory.mktemp("tiny-chroma") / "chroma", seed=0)


@pytest.fixture(scope="session")
def exported_chroma(tiny_chroma, tmp_path_factory) -> Path:
    """The tiny Chroma model exported to fp32 ONNX (once per session)."""
    return _exports({"chroma": tiny_chroma}, tmp_path_factory.mktemp("exported-chroma"), "chroma")()


@pytest.fixture(scope="session")
def tiny_flux2_klein(tmp_path_factory) -> Path:
    """A tiny random FLUX.2 [klein] base model (Flux2KleinPipeline) as a diffusers folder, once
    per session (the distilled variant is the same weights with is_distilled set)."""
    from sdrt.export.random_flux2 import save_random_flux2_klein

    return save_random_flux2_klein(tmp_path_factory.mktemp("tiny-flux2") / "klein", kind="base", seed=0)


@pytest.fixture(scope="session")
def exported_flux2_klein(tiny_flux2_klein, tmp_path_factory) -> Path:
    """The tiny FLUX.2 [klein] base model exported to fp32 ONNX (once per session)."""
    return _exports({"base": tiny_flux2_klein}, tmp_path_factory.mktemp("exported-flux2"), "base")()


@pytest.fixture(scope="session")
def tiny_zimage(tmp_path_factory) -> Path:
    """A tiny random ZImagePipeline (Turbo's scheduler) as a diffusers folder, once per session."""
    from sdrt.export.random_zimage import save_random_zimage

    return save_random_zimage(tmp_path_factory.mktemp("tiny-zimage") / "zimage", seed=0)


@pytest.fixture(scope="session")
def exported_zimage(tiny_zimage, tmp_path_factory) -> Path:
    """The tiny Z-Image model exported to fp32 ONNX (once per session)."""
    return _exports({"zimage": tiny_zimage}, tmp_path_factory.mktemp("exported-zimage"), "zimage")()
