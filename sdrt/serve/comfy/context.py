"""What the nodes see of the server: its models (the served one and --models-dir's, by the names
ComfyUI clients send: "v1-5-pruned-emaonly.safetensors" finds the export "v1-5-pruned-emaonly"),
its LoRAs, the input folder (uploads), the output and temp folders (SaveImage, PreviewImage), and
the samplers and schedulers a KSampler may name."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from sdrt.errors import SdrtError
from sdrt.runtime.schedulers import COMFY_SAMPLERS, COMFY_SCHEDULER_NAMES

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
#: A filename prefix keeps letters, digits and these; anything else becomes "_".
PREFIX_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
PIXEL_MAX = 255


class ComfyContext:
    def __init__(self, service, catalog, folders: dict[str, Path]):
        self.service, self.catalog, self.folders = service, catalog, folders
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        # ComfyUI's KSampler names -> sdrt's ComfyUI samplers (its rules); its schedulers, in its order.
        self.samplers, self.schedulers = COMFY_SAMPLERS, COMFY_SCHEDULER_NAMES
        self.progress = None
        self.preview = None  # the running prompt's previews (sdrt.serve.comfy.previews)
        self.cancel: threading.Event | None = None
        self._loaded: dict[Path, object] = {}
        self._counter_lock = threading.Lock()

    # ------------------------------------------------------------------ models
    def checkpoint_names(self) -> list[str]:
        return [model.name for model in self.catalog.models()]

    def accepts_checkpoint(self, name: str) -> bool:
        return self.catalog.find(name) is not None

    def pipeline_for(self, name: str):
        model = self.catalog.find(name)
        if model is None:
            raise SdrtError(f"ckpt_name: {name!r} is not a served model ({self.catalog.describe_choices()})")
        pipeline = self.service.pipeline
        if self.catalog.is_served(model, pipeline.folder):
            return pipeline
        if model.folder not in self._loaded:
            self._loaded = {model.folder: self.catalog.load(model.folder)}  # one other model at a time
        return self._loaded[model.folder]

    def loaded_pipelines(self) -> list:
        """The --models-dir models loaded besides the served one."""
        return list(self._loaded.values())

    def check_limits(self, steps: int, images: int) -> None:
        settings = self.service.settings
        if steps > settings.max_steps:
            raise SdrtError(f"steps: at most {settings.max_steps} (the server's --max-steps), got {steps}")
        if images > settings.max_images:
            raise SdrtError(
                f"batch_size: at most {settings.max_images} images (the server's --max-images), got {images}"
            )

    def default_manifest(self):
        return self.service.pipeline.manifest

    def _loras(self) -> dict[str, Path]:
        return self.service.pipeline.loras.library.names(confined=True)

    def lora_names(self) -> list[str]:
        """The files of --lora-dir, as ComfyUI lists them (with their extension)."""
        return sorted(path.name for path in self._loras().values())

    def lora_ref_name(self, name: str) -> str:
        """The LoRA library's name for a file name a client sends ("x.safetensors" -> "x")."""
        by_file = {path.name: stem for stem, path in self._loras().items()}
        return by_file.get(name, name)

    def controlnet_names(self) -> list[str]:
        """The exported ControlNets of --controlnet-dir, by folder name."""
        return sorted(self.service.pipeline.controlnets.names(confined=True))

    def controlnet_name(self, name: str) -> str | None:
        """The ControlNet a client's name finds ("NAME", "NAME.safetensors", "sub/NAME.pth")."""
        stem = name.replace("\\", "/").rsplit("/", 1)[-1]
        names = self.controlnet_names()
        for candidate in (stem, stem.rsplit(".", 1)[0]):
            if candidate in names:
                return candidate
        return None

    def sampler_for(self, sampler: str) -> str:
        return self.samplers[sampler]

    # ------------------------------------------------------------------ files
    def input_names(self) -> list[str]:
        folder = self.folders["input"]
        return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)

    def path_in(self, kind: str, name: str, subfolder: str = "") -> Path:
        """A file of the input, output or temp folder; a name reaching outside it is refused."""
        if kind not in self.folders:
            raise SdrtError(f"type: {kind!r} is not one of {', '.join(self.folders)}")
        root = self.folders[kind].resolve()
        if "\0" in name or "\0" in subfolder:
            raise SdrtError("filename: not a file name")
        path = (root / subfolder / name).resolve()
        if root not in path.parents:
            raise SdrtError(f"filename: {name!r} is outside the {kind} folder")
        return path

    def input_path(self, name: str) -> Path:
        return self.path_in("input", name)

    def save_image(self, image: np.ndarray, prefix: str, kind: str) -> dict:
        """A PNG named as ComfyUI names them (PREFIX_00001_.png, the counter past the folder's last)."""
        folder = self.folders[kind]
        prefix = PREFIX_UNSAFE.sub("_", prefix.replace("/", "_")) or "ComfyUI"
        pixels = Image.fromarray(np.round(np.clip(image, 0, 1) * PIXEL_MAX).astype(np.uint8))
        with self._counter_lock:
            pattern = re.compile(re.escape(prefix) + r"_(\d+)_\.png$")
            taken = [int(m.group(1)) for p in folder.iterdir() if (m := pattern.match(p.name))]
            name = f"{prefix}_{max(taken, default=0) + 1:05d}_.png"
            pixels.save(folder / name)
        return {"filename": name, "subfolder": "", "type": kind}
