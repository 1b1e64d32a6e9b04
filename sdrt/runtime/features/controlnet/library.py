"""The ControlNets a loaded model can use: exported ControlNet folders named by path, or by their
folder name inside the model's ControlNet folder (`--controlnet-dir`, what A1111 clients list
with `GET /controlnet/model_list`). Each is checked against the model and its engine loaded on
first use, then kept. A server's requests are `confined` (their names come from clients): a name
then finds a ControlNet of the folder only, never a path, and errors show no server path
(sdrt.runtime.files.confined)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sdrt.errors import GenerationError, ModelFolderError
from sdrt.runtime.engines import Engine
from sdrt.runtime.features.controlnet.guidance import ControlRun, PreparedUnit, guidance_window, level_window
from sdrt.runtime.features.controlnet.manifest import COMPONENT, KIND, ControlNetManifest
from sdrt.runtime.features.controlnet.preprocess import preprocess
from sdrt.runtime.features.controlnet.units import PARAM
from sdrt.runtime.files.confined import HIDDEN_FOLDER, hide_paths, inside, name_problem, shown
from sdrt.runtime.files.integrity import verify_components
from sdrt.runtime.files.json_files import read_json
from sdrt.runtime.imaging.inputs import to_control_input
from sdrt.runtime.manifest import CONTROL_IMAGE, MANIFEST_NAME, Manifest, residual_names

if TYPE_CHECKING:
    from sdrt.runtime.request_resolve import ResolvedRequest

#: ControlNets whose engines stay loaded (the least recently used goes first; SD 1.5's takes
#: 1.4 GB in fp32). A request holds its engines until it ends.
KEPT_CONTROLNETS = 4
#: (folder, its manifest with the model's ranges) -> the ControlNet's engine.
EngineMaker = Callable[[Path, ControlNetManifest], Engine]


@dataclass(frozen=True)
class LoadedControlNet:
    name: str
    folder: Path
    manifest: ControlNetManifest
    engine: Engine


class ControlNetLibrary:
    def __init__(
        self,
        model: Manifest,
        model_name: str,
        make_engine: EngineMaker,
        folder: str | Path | None = None,
    ):
        self.model, self.model_name = model, model_name
        self.folder = None if folder is None else Path(folder)
        if self.folder is not None and not self.folder.is_dir():
            raise ModelFolderError(f"ControlNet folder {self.folder} does not exist")
        self._make_engine = make_engine
        self._loaded: OrderedDict[Path, LoadedControlNet] = OrderedDict()
        self._lock = threading.Lock()

    def names(self, confined: bool = False) -> dict[str, Path]:
        """Name -> folder of every exported ControlNet in the ControlNet folder (`confined`: only
        those inside it once symlinks are resolved)."""
        if self.folder is None:
            return {}
        found = {}
        for path in sorted(self.folder.iterdir()):
            manifest = path / MANIFEST_NAME
            if confined and not inside(manifest, self.folder):
                continue  # a symlink out of the folder
            if manifest.is_file() and _kind(manifest) == KIND:
                found[path.name] = path
        return found

    def path_of(self, source: str | Path, confined: bool = False) -> Path:
        if confined:
            return self._named(source)
        path = Path(source)
        if path.is_dir():
            return path
        names = self.names()
        if str(source) in names:
            return names[str(source)]
        where = (
            f"in {self.folder}"
            if self.folder is not None
            else "(give its folder, or a ControlNet folder with --controlnet-dir to name them)"
        )
        raise GenerationError(f"unknown ControlNet {str(source)!r}: no such exported ControlNet {where}", PARAM)

    def _named(self, source: str | Path) -> Path:
        """A client's name: a ControlNet of the folder, or an error that shows no server path."""
        problem = name_problem(source)
        if problem is not None:
            raise GenerationError(f"unknown ControlNet {shown(source)}: {problem}; name one of this server's", PARAM)
        names = self.names(confined=True)
        if str(source) not in names:
            raise GenerationError(
                f"unknown ControlNet {shown(source)}: this server has no ControlNet of that name", PARAM
            )
        return names[str(source)]

    def get(self, source: str | Path, confined: bool = False) -> LoadedControlNet:
        """The ControlNet `source` names, loaded (`confined`: a client's name, see the module's note)."""
        named = self.path_of(source, confined)
        path = named.resolve()
        with self._lock:
            if path not in self._loaded:
                try:
                    manifest = ControlNetManifest.load(path).for_model(path.name, self.model, self.model_name)
                    verify_components(path, manifest, [COMPONENT])
                except ModelFolderError as error:
                    message = str(error)
                    if confined:
                        hidden = {named: f"ControlNet {shown(source)}", named.parent: HIDDEN_FOLDER}
                        message = hide_paths(message, hidden)
                    raise GenerationError(message, PARAM) from None
                self._loaded[path] = LoadedControlNet(path.name, path, manifest, self._make_engine(path, manifest))
            self._loaded.move_to_end(path)
            while len(self._loaded) > KEPT_CONTROLNETS:
                self._loaded.popitem(last=False)
            return self._loaded[path]

    def prepare(
        self,
        resolved: ResolvedRequest,
        first: int,
        calls: int,
        guided: bool,
        unet: Engine,
        warnings: list[str],
        call_sigmas: np.ndarray | None = None,
    ) -> ControlRun | None:
        """The run's ControlNets: each unit's engine and control image at the image's size,
        and the calls (`calls` from UNet call `first` on) it guides (a unit with `levels`: by
        each call's noise level, `call_sigmas` of those calls)."""
        controls, height, width = resolved.controls, resolved.height, resolved.width
        confined = resolved.request.confined_names
        rows = resolved.batch * (2 if guided else 1)
        if not controls:
            return None
        if not residual_names(unet.spec):
            self.get(controls[0][0].model, confined)  # says the model's UNet takes no residuals
        units = []
        for index, (unit, image) in enumerate(controls):
            loaded = self.get(unit.model, confined)
            image = preprocess(image, unit)
            if image.size != (width, height):
                warnings.append(
                    f"controlnet {index + 1}: the control image is {image.width}x{image.height}; it was "
                    f"resized to {width}x{height} (Lanczos), as diffusers does"
                )
            pixels = to_control_input(image, height, width).astype(loaded.engine.input_dtype(CONTROL_IMAGE))
            pooled = loaded.manifest.global_pool_conditions  # diffusers runs these in guess mode
            if unit.levels is None:
                keep = guidance_window(unit.start, unit.end, calls)
            elif call_sigmas is None:
                raise GenerationError("a ControlNet guided by noise levels needs a sampler with noise levels", PARAM)
            else:
                keep = level_window(unit.levels, call_sigmas)
            units.append(
                PreparedUnit(
                    loaded.engine,
                    pixels,
                    float(unit.scale),
                    keep,
                    soft=unit.soft or pooled,
                    conditional_only=unit.conditional_only or pooled,
                )
            )
        return ControlRun(units, unet, first, guided, rows)


def _kind(path: Path):
    try:
        data = read_json(path, kind=object)
    except ModelFolderError:
        return None
    return data.get("kind") if isinstance(data, dict) else None
