"""An exported ControlNet's `manifest.json` (kind "controlnet"): its one engine's tensors, and what
decides which models it fits. Its JSON Schema is the model manifest's, with these fields.

A ControlNet runs at the sizes, batches and text lengths of the model it guides: at load its
dimension ranges are replaced by the model's (`for_model`), after checking that it fits: the
same family (SDXL or not), text width, latent channels and image-to-latent factor, and its
residual outputs equal to the UNet's residual inputs.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from sdrt.errors import ModelFolderError
from sdrt.runtime.families import FAMILIES as MODEL_FAMILIES
from sdrt.runtime.files.json_files import read_json
from sdrt.runtime.files.user_files import present
from sdrt.runtime.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    ComponentSpec,
    DimRange,
    Manifest,
    TensorSpec,
    residual_names,
)
from sdrt.runtime.manifest_checks import SCHEMA_PATH, confined_path

KIND = "controlnet"
COMPONENT = "controlnet"
FAMILIES = tuple(dict.fromkeys(f.controlnet_family for f in MODEL_FAMILIES.values() if f.controlnet_family))


@dataclass(frozen=True)
class ControlNetManifest:
    format_version: int
    kind: str
    family: str  # the family it was trained for: sd1, sd2 or sdxl
    text_hidden_size: int  # its cross-attention width: the model's text width
    latent_channels: int
    conditioning_channels: int
    conditioning_scale_factor: int  # control image pixels per latent: the model's VAE scale factor
    global_pool_conditions: bool  # residuals averaged over the image (shuffle); then guess mode
    dims: dict[str, DimRange]
    components: dict[str, ComponentSpec]
    source: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def spec(self) -> ComponentSpec:
        return self.components[COMPONENT]

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / MANIFEST_NAME
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> ControlNetManifest:
        folder = Path(folder)
        path = folder / MANIFEST_NAME
        if not present(path, ModelFolderError):
            raise ModelFolderError(
                f"{folder} is not an exported ControlNet (no {MANIFEST_NAME}); export one with "
                "`sdrt export CONTROLNET --out DIR`"
            )
        data = read_json(path, kind=object, max_bytes=MAX_MANIFEST_BYTES)
        if not isinstance(data, dict) or data.get("kind") != KIND:
            raise ModelFolderError(
                f"{folder} is a model export, not a ControlNet; export a ControlNet with "
                "`sdrt export CONTROLNET --out DIR`"
            )
        if data.get("format_version") != FORMAT_VERSION:
            raise ModelFolderError(
                f"{path}: format_version {data.get('format_version')!r} is not "
                f"{FORMAT_VERSION}; re-export the ControlNet"
            )
        import jsonschema

        error = jsonschema.exceptions.best_match(_validator().iter_errors(data))
        if error is not None:
            where = "/".join(str(part) for part in error.absolute_path) or "the top level"
            raise ModelFolderError(f"{path} is malformed at {where}: {error.message[:200]}; re-export the ControlNet")
        data["dims"] = {name: DimRange(**value) for name, value in data["dims"].items()}
        components = {}
        for name, value in data["components"].items():
            value = dict(
                value,
                inputs=[TensorSpec(**t) for t in value["inputs"]],
                outputs=[TensorSpec(**t) for t in value["outputs"]],
            )
            components[name] = ComponentSpec(**value)
        data["components"] = components
        manifest = cls(**data)
        for relative in (manifest.spec.file, *manifest.spec.data_files):
            confined_path(folder, relative, f"{path}: components.{COMPONENT}")
        return manifest

    def for_model(self, name: str, model: Manifest, model_name: str) -> ControlNetManifest:
        """This ControlNet with the model's dimension ranges, once it is known to fit the model
        (a ModelFolderError naming what differs otherwise)."""
        family = model.model_family.controlnet_family or model.family
        if (self.family == "sdxl") != (family == "sdxl"):
            raise ModelFolderError(
                f"ControlNet {name} is for {self.family} models and {model_name} is {family}; "
                f"use a ControlNet trained for {family}"
            )
        unet = model.components[model.model_family.denoiser.component]
        wanted = residual_names(unet)
        if not wanted:
            raise ModelFolderError(
                f"{model_name}'s UNet takes no ControlNet residuals: it was exported before "
                "ControlNet support; re-export it with `sdrt export` to use ControlNets"
            )
        for what, mine, theirs in (
            ("text width", self.text_hidden_size, model.text_hidden_size),
            ("latent channels", self.latent_channels, model.latent_channels),
            ("pixels per latent", self.conditioning_scale_factor, model.vae_scale_factor),
        ):
            if mine != theirs:
                raise ModelFolderError(
                    f"ControlNet {name} ({self.family}) has {what} {mine} but {model_name} "
                    f"({family}) has {theirs}: it is for another model architecture"
                )
        outputs = {t.name: t.shape for t in self.spec.outputs}
        inputs = {t.name: t.shape for t in unet.inputs}
        if residual_names(self.spec) != wanted or any(outputs[n] != inputs[n] for n in wanted):
            raise ModelFolderError(
                f"ControlNet {name}'s residuals do not fit {model_name}'s UNet (another UNet architecture)"
            )
        missing = sorted(
            {
                s
                for t in self.spec.inputs + self.spec.outputs
                for s in t.shape
                if isinstance(s, str) and s not in model.dims
            }
        )
        if missing:
            raise ModelFolderError(
                f"ControlNet {name} has sizes {model_name} does not define ({', '.join(missing)}); "
                "re-export both with this sdrt version"
            )
        return replace(self, dims=dict(model.dims))


@functools.lru_cache(maxsize=1)
def _validator():
    """The model manifest's schema with this manifest's top-level fields."""
    import jsonschema

    model = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    count = {"type": "integer", "minimum": 1, "maximum": 1048576}
    schema = {
        "$schema": model["$schema"],
        "type": "object",
        "additionalProperties": False,
        "$defs": model["$defs"],
        "required": [
            "format_version",
            "kind",
            "family",
            "text_hidden_size",
            "latent_channels",
            "conditioning_channels",
            "conditioning_scale_factor",
            "global_pool_conditions",
            "dims",
            "components",
        ],
        "properties": {
            "format_version": {"type": "integer"},
            "kind": {"const": KIND},
            "family": {"enum": list(FAMILIES)},
            "text_hidden_size": count,
            "latent_channels": count,
            "conditioning_channels": count,
            "conditioning_scale_factor": count,
            "global_pool_conditions": {"type": "boolean"},
            "dims": model["properties"]["dims"],
            "components": {**model["properties"]["components"], "required": [COMPONENT], "maxProperties": 1},
            "source": {"type": "object"},
            "versions": model["properties"]["versions"],
        },
    }
    return jsonschema.Draft202012Validator(schema)
