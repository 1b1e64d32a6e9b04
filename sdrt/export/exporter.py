"""`sdrt export`: a Stable Diffusion pipeline to a validated ONNX folder with a manifest.

The folder has the layout of diffusers' `OnnxStableDiffusionPipeline` (text_encoder/,
unet/, vae_decoder/, vae_encoder/ each with model.onnx, plus tokenizer/, scheduler/ and
model_index.json) and sdrt's `manifest.json`. It is written beside the target and renamed into
place at the end, so a failed or interrupted export leaves no half-written folder.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from sdrt import __version__
from sdrt.errors import ModelFolderError, SdrtError
from sdrt.export.components import ONNX_OPSET, ComponentExport, ModelGeometry, component_exports
from sdrt.runtime.manifest import FORMAT_VERSION, ComponentSpec, Manifest

ONNX_FILE = "model.onnx"
# fp32 export must reproduce the PyTorch module to this relative error (max |diff| / max |ref|).
FP32_RELATIVE_TOLERANCE = 1e-4
VALIDATION_SEED = 0
TARGET_CPU = "cpu"


class ExportError(SdrtError):
    """The export could not be written or did not reproduce the PyTorch model."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _validation_shapes(geometry: ModelGeometry) -> list[tuple[int, int, int]]:
    """(batch, latent height, latent width): native square at batch 1, then non-square at 2."""
    native, multiple = geometry.native_latent_size, geometry.unet_size_multiple
    wider = native + max(multiple, native // 2 - (native // 2) % multiple)
    return [(1, native, native), (2, native, wider)]


def validate_component(component: ComponentExport, onnx_path: Path, geometry: ModelGeometry) -> dict:
    """Run ONNX Runtime and the PyTorch module on the same seeded inputs at two shapes."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(VALIDATION_SEED)
    worst = {"max_abs_error": 0.0, "max_rel_error": 0.0}
    shapes = []
    for batch, latent_h, latent_w in _validation_shapes(geometry):
        inputs = component.make_inputs(generator, batch, latent_h, latent_w)
        with torch.no_grad():
            expected = component.module(*inputs)
        expected = expected if isinstance(expected, tuple) else (expected,)
        feeds = {spec.name: tensor.numpy() for spec, tensor in zip(component.inputs, inputs)}
        got = session.run([spec.name for spec in component.outputs], feeds)
        for reference, output in zip(expected, got):
            reference = reference.numpy()
            abs_error = float(np.abs(output - reference).max())
            rel_error = abs_error / max(float(np.abs(reference).max()), 1e-30)
            worst["max_abs_error"] = max(worst["max_abs_error"], abs_error)
            worst["max_rel_error"] = max(worst["max_rel_error"], rel_error)
        shapes.append(list(inputs[0].shape))
    worst.update(shapes=shapes, tolerance=FP32_RELATIVE_TOLERANCE, passed=worst["max_rel_error"] <= FP32_RELATIVE_TOLERANCE)
    return worst


def _export_onnx(component: ComponentExport, folder: Path, geometry: ModelGeometry) -> Path:
    import torch

    folder.mkdir(parents=True)
    path = folder / ONNX_FILE
    batch, latent_h, latent_w = _validation_shapes(geometry)[0]
    example = component.make_inputs(torch.Generator().manual_seed(VALIDATION_SEED), batch, latent_h, latent_w)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
        torch.onnx.export(
            component.module.eval(),
            example,
            str(path),
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=[t.name for t in component.inputs],
            output_names=[t.name for t in component.outputs],
            dynamic_axes=component.dynamic_axes(),
            do_constant_folding=True,
        )
    return path


def _family(pipeline) -> str:
    """sd2 for OpenCLIP text encoders with linear attention projections, else sd1."""
    return "sd2" if getattr(pipeline.unet.config, "use_linear_projection", False) else "sd1"


def _versions() -> dict[str, str]:
    import diffusers
    import onnx
    import onnxruntime
    import torch
    import transformers

    return {
        "sdrt": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _write_diffusers_files(pipeline, folder: Path) -> None:
    """tokenizer/, scheduler/ and the model_index.json OnnxStableDiffusionPipeline reads."""
    import diffusers

    pipeline.tokenizer.save_pretrained(folder / "tokenizer")
    pipeline.scheduler.save_config(folder / "scheduler")
    onnx_model = ["diffusers", "OnnxRuntimeModel"]
    index = {
        "_class_name": "OnnxStableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "text_encoder": onnx_model,
        "unet": onnx_model,
        "vae_decoder": onnx_model,
        "vae_encoder": onnx_model,
        "tokenizer": ["transformers", type(pipeline.tokenizer).__name__],
        "scheduler": ["diffusers", type(pipeline.scheduler).__name__],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def export_pipeline(
    pipeline,
    out_dir: str | Path,
    *,
    source: dict,
    overwrite: bool = False,
    progress: Callable[[str], None] = print,
) -> Manifest:
    """Export, validate and write the folder; returns its manifest."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ExportError(f"{out_dir} already exists; pass --overwrite to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    geometry = ModelGeometry.of(pipeline)
    num_train_timesteps = pipeline.scheduler.config.num_train_timesteps
    try:
        staging.mkdir()
        components = {}
        for component in component_exports(pipeline, geometry, num_train_timesteps):
            started = time.perf_counter()
            progress(f"{component.name}: exporting")
            path = _export_onnx(component, staging / component.name, geometry)
            validation = validate_component(component, path, geometry)
            elapsed = time.perf_counter() - started
            progress(
                f"{component.name}: max abs error {validation['max_abs_error']:.2e}, "
                f"max rel error {validation['max_rel_error']:.2e} ({elapsed:.1f}s)"
            )
            if not validation["passed"]:
                raise ExportError(
                    f"{component.name} does not reproduce the PyTorch model: relative error "
                    f"{validation['max_rel_error']:.2e} > {FP32_RELATIVE_TOLERANCE:.0e}"
                )
            components[component.name] = ComponentSpec(
                file=f"{component.name}/{ONNX_FILE}",
                precision="fp32",
                target=TARGET_CPU,
                inputs=component.inputs,
                outputs=component.outputs,
                sha256=_sha256(path),
                validation=validation,
            )
        _write_diffusers_files(pipeline, staging)
        vae = pipeline.vae.config
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            family=_family(pipeline),
            prediction_type=pipeline.scheduler.config.get("prediction_type", "epsilon"),
            vae_scaling_factor=float(vae.scaling_factor),
            vae_shift_factor=float(getattr(vae, "shift_factor", None) or 0.0),
            vae_scale_factor=geometry.vae_scale_factor,
            latent_channels=geometry.latent_channels,
            unet_in_channels=geometry.unet_in_channels,
            text_length=geometry.text_length,
            text_hidden_size=geometry.text_hidden_size,
            native_height=geometry.native_latent_size * geometry.vae_scale_factor,
            native_width=geometry.native_latent_size * geometry.vae_scale_factor,
            dims=geometry.dims(),
            components=components,
            source=source,
            versions=_versions(),
        )
        manifest.save(staging)
        _replace(staging, out_dir)
        return manifest
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise ExportError(f"no space left on the device while writing {out_dir}") from None
        raise ExportError(f"cannot write {out_dir}: {error}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace(staging: Path, out_dir: Path) -> None:
    """Move the finished folder into place; an old one is removed only after that succeeds."""
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    if out_dir.exists():
        out_dir.rename(old)
    staging.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


def export_model(source: str, out_dir: str | Path, *, config: str | None = None, overwrite: bool = False,
                 progress: Callable[[str], None] = print) -> Manifest:
    """Load `source` (folder, checkpoint or hub id) and export it to `out_dir`."""
    from sdrt.export.sources import load_pipeline

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ExportError(f"{out_dir} already exists; pass --overwrite to replace it")
    if out_dir.exists() and not (out_dir / "manifest.json").is_file() and any(out_dir.iterdir()):
        raise ModelFolderError(f"{out_dir} is not an sdrt export; refusing to replace it")
    progress(f"loading {source}")
    pipeline = load_pipeline(source, config)
    return export_pipeline(pipeline, out_dir, source={"model": str(source)}, overwrite=overwrite, progress=progress)
