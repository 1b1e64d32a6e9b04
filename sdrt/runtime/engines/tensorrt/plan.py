"""Everything about TensorRT engines besides their profiles (profiles.py) that needs no
TensorRT: the cache key that says when a built engine is still valid, engine file names, each
component's precision and the build settings `sdrt build` saves. `sdrt build` and the TensorRT
backend both use it; tests run it on any machine.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sdrt.errors import ConfigError, SdrtError
from sdrt.runtime.engines.tensorrt.profiles import Profile
from sdrt.runtime.manifest import COMPONENT_NAMES, ComponentSpec

ENGINE_FOLDER = "tensorrt"
BUILD_FILE = "build.json"  # the active build's settings, written by `sdrt build`
PLAN_SUFFIX = ".plan"
KEY_SUFFIX = ".plan.json"
#: Bumped when sdrt changes how it builds (flags, precision rules), invalidating old engines.
BUILD_FORMAT = 1
DEFAULT_WORKSPACE_BYTES = 8 * 2**30
PRECISIONS = ("fp16", "fp32")


# ---------------------------------------------------------------- cache keys
@dataclass(frozen=True)
class Device:
    """What a built engine is specific to, besides its ONNX file and settings."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "9.0"


@dataclass(frozen=True)
class EngineKey:
    """Everything whose change makes a built engine invalid. Its digest names the engine file,
    and its fields are stored beside it to say what changed."""

    component: str
    onnx_sha256: str
    data_sha256: dict[str, str]
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    profile: dict[str, list[int]]
    build_format: int = BUILD_FORMAT
    builder: dict = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        component: str,
        spec: ComponentSpec,
        profile: Profile,
        precision: str,
        device: Device,
        builder: Mapping | None = None,
    ) -> EngineKey:
        return cls(
            component,
            spec.sha256,
            dict(spec.data_files),
            device.tensorrt_version,
            device.gpu_name,
            device.compute_capability,
            precision,
            profile.for_component(spec),
            BUILD_FORMAT,
            dict(builder or {}),
        )

    def to_json(self) -> dict:
        return asdict(self)

    def digest(self) -> str:
        canonical = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def changes_from(self, old: Mapping) -> list[str]:
        """'field: old -> new' for each field that differs from a stored key."""
        new = self.to_json()
        return [f"{name}: {old.get(name)!r} -> {new[name]!r}" for name in new if old.get(name) != new[name]]


def plan_path(folder: Path, key: EngineKey) -> Path:
    return Path(folder) / ENGINE_FOLDER / f"{key.component}-{key.digest()[:16]}{PLAN_SUFFIX}"


def key_path(plan: Path) -> Path:
    return plan.with_name(plan.name[: -len(PLAN_SUFFIX)] + KEY_SUFFIX)


def stale_reason(folder: Path, key: EngineKey) -> str | None:
    """None when the engine for `key` exists and is complete; otherwise why it must be built,
    naming what changed since the newest engine of that component (the foreign/stale case)."""
    plan = plan_path(folder, key)
    stored = key_path(plan)
    if plan.is_file() and stored.is_file():
        record = json.loads(stored.read_text(encoding="utf-8"))
        if record.get("plan_bytes") == plan.stat().st_size:
            return None
        return f"{plan.name} is incomplete (an interrupted build?)"
    others = sorted(
        (Path(folder) / ENGINE_FOLDER).glob(f"{key.component}-*{KEY_SUFFIX}"), key=lambda path: path.stat().st_mtime
    )
    if not others:
        return f"no {key.component} engine has been built"
    previous = json.loads(others[-1].read_text(encoding="utf-8")).get("key", {})
    changes = key.changes_from(previous)
    return f"the {key.component} engine was built for other settings ({'; '.join(changes)})"


def component_precision(component: str, spec: ComponentSpec, requested: str) -> str:
    """The precision a component's engine is built at. An fp16 ONNX file already says which
    operations stay fp32 (normalizations, softmax, the timestep), so it is built strongly typed,
    exactly as exported. An fp32 file follows `requested`, except the VAE, which stays fp32
    (SD's VAE overflows in fp16; export with --vae-precision fp16 to choose otherwise)."""
    if requested not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if spec.qdq is not None:  # a Q/DQ graph (sdrt export --qdq): its layers in int8 / fp8, the rest fp16
        if requested == "fp32":
            raise ConfigError(
                f"{component} is a {spec.qdq.qdq} Q/DQ graph, built in {spec.qdq.qdq} and fp16; drop --precision fp32"
            )
        return spec.qdq.qdq
    if spec.precision == "fp16":
        if requested == "fp32":
            raise ConfigError(f"{component} was exported in fp16; re-export with --precision fp32 for fp32 engines")
        return "fp16"
    if component.startswith("vae"):
        return "fp32"
    return requested


# ---------------------------------------------------------------- build settings
#: How LoRA-adaptable engines are built: their mapped weights refittable (a change here makes
#: older engines stale).
REFIT_KIND = "lora-layers"


@dataclass(frozen=True)
class BuildSettings:
    """What `sdrt build` was asked for; saved as tensorrt/build.json so the backend loads the
    same engines (and rebuilds them, with a message, when they are stale)."""

    profile: Profile
    precision: str = "fp16"
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES
    components: tuple[str, ...] = COMPONENT_NAMES  # those the model has are built

    def builder(self) -> dict:
        # Engines with a LoRA weights map are built refittable (build.refittable_weights).
        return {"workspace_bytes": self.workspace_bytes, "refit": REFIT_KIND}

    def save(self, folder: Path) -> Path:
        path = Path(folder) / ENGINE_FOLDER / BUILD_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "profile": self.profile.to_json(),
            "precision": self.precision,
            "workspace_bytes": self.workspace_bytes,
            "components": list(self.components),
        }
        path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, folder: Path) -> BuildSettings:
        path = Path(folder) / ENGINE_FOLDER / BUILD_FILE
        if not path.is_file():
            raise SdrtError(f"{folder} has no TensorRT engines: build them with `sdrt build {folder}`")
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(
            Profile.from_json(data["profile"]),
            data["precision"],
            int(data["workspace_bytes"]),
            tuple(data["components"]),
        )
