"""`manifest.json`: the single source of truth about an exported model folder.

The exporter writes it; the runtime and the engine builder only read it. It names every
tensor with its dtype and shape (ints, or the name of a dynamic dimension whose range is in
`dims`), and carries the model constants the runtime needs. docs/manifest.md documents each
field and docs/manifest.schema.json is its JSON Schema.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sdrt.errors import ModelFolderError

MANIFEST_NAME = "manifest.json"

# Dynamic dimension names in `dims` (the exporter writes them, the runtime and builder read them).
BATCH = "batch"  # images
UNET_BATCH = "unet_batch"  # the UNet sees the conditional and unconditional halves together
TIMESTEP_BATCH = "timestep_batch"  # 1 (broadcast) or unet_batch
HEIGHT, WIDTH = "height", "width"
LATENT_HEIGHT, LATENT_WIDTH = "latent_height", "latent_width"
FORMAT_VERSION = 1
DTYPES = ("float32", "float16", "int32", "int64")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: list[int | str]


@dataclass(frozen=True)
class DimRange:
    """A dynamic dimension: valid values are min..max in steps of `multiple`."""

    min: int
    opt: int
    max: int
    multiple: int = 1

    def contains(self, value: int) -> bool:
        return self.min <= value <= self.max and value % self.multiple == 0


@dataclass(frozen=True)
class ComponentSpec:
    file: str
    precision: str
    target: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    sha256: str
    validation: dict[str, Any] = field(default_factory=dict)
    # External weight files next to `file` (models over 2 GB): relative path -> sha256.
    data_files: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    format_version: int
    family: str
    prediction_type: str
    vae_scaling_factor: float
    vae_shift_factor: float
    vae_scale_factor: int
    latent_channels: int
    unet_in_channels: int
    text_length: int
    text_hidden_size: int
    native_height: int
    native_width: int
    dims: dict[str, DimRange]
    components: dict[str, ComponentSpec]
    source: dict[str, Any]
    versions: dict[str, str]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / MANIFEST_NAME
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        if data.get("format_version") != FORMAT_VERSION:
            raise ModelFolderError(
                f"manifest format_version {data.get('format_version')!r} is not {FORMAT_VERSION}; "
                "re-export the model with this sdrt version"
            )
        data = dict(data)
        data["dims"] = {name: DimRange(**value) for name, value in data["dims"].items()}
        components = {}
        for name, value in data["components"].items():
            value = dict(value)
            value["inputs"] = [TensorSpec(**t) for t in value["inputs"]]
            value["outputs"] = [TensorSpec(**t) for t in value["outputs"]]
            components[name] = ComponentSpec(**value)
        data["components"] = components
        return cls(**data)

    @classmethod
    def load(cls, folder: str | Path) -> "Manifest":
        path = Path(folder) / MANIFEST_NAME
        if not path.is_file():
            raise ModelFolderError(f"{folder} has no {MANIFEST_NAME}; export the model with `sdrt export`")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls.from_dict(data)
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ModelFolderError(f"{path} is malformed ({error}); re-export the model") from None
