"""Generation on exported engines: encode prompts, prepare latents, denoise, decode.

`Pipeline.load(folder, backend=..., threads=...)` takes the load-time settings and builds the
engines once; `run(GenerationRequest)` (or `generate(prompt, **settings)`) takes the per-request
settings. The numerics follow diffusers' `StableDiffusionPipeline` step for step, so the same
model, prompt, settings and seed give the same image (tests/runtime/test_pipeline.py compares them).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from sdrt.errors import ConfigError, ModelFolderError
from sdrt.runtime import vae
from sdrt.runtime.compose import GenerationResult, run_resolved
from sdrt.runtime.engines import (
    DEFAULT_BACKEND,
    DEFAULT_LORA_CACHE_MB,
    Backend,
    Engine,
    LoadedEngines,
    LoadedFolder,
    LoadOptions,
    backend_named,
)
from sdrt.runtime.families.sdxl import StableDiffusionXL
from sdrt.runtime.features import refiner as refiners
from sdrt.runtime.features.controlnet.library import ControlNetLibrary
from sdrt.runtime.features.controlnet.manifest import COMPONENT as CONTROLNET
from sdrt.runtime.features.hires import hires_run
from sdrt.runtime.features.inpaint_area import masked_run
from sdrt.runtime.features.lora.adapters import LoraAdapters
from sdrt.runtime.features.lora.library import LoraLibrary
from sdrt.runtime.features.per_image import per_image_run, runs_per_image
from sdrt.runtime.features.preview import Preview
from sdrt.runtime.files.integrity import verify_components
from sdrt.runtime.files.json_files import read_json
from sdrt.runtime.files.user_files import present
from sdrt.runtime.loop.context import GenerationCancelled, RunWatch
from sdrt.runtime.loop.timings import (
    TOTAL,
)
from sdrt.runtime.manifest import MANIFEST_NAME, Manifest
from sdrt.runtime.model_folder import infer_manifest
from sdrt.runtime.parameters import generation_parameters
from sdrt.runtime.request import GenerationError, GenerationRequest
from sdrt.runtime.request_resolve import ResolvedRequest
from sdrt.runtime.rng import TorchGenerator
from sdrt.runtime.schedulers import Scheduler, sampler_from_config
from sdrt.runtime.schedulers.kdiffusion.a1111_settings import settings_parameters
from sdrt.runtime.schedulers.kdiffusion.comfy import ComfyRules
from sdrt.runtime.schedulers.kdiffusion.sampler import KDiffusionSampler
from sdrt.runtime.text.embeddings import EmbeddingSource
from sdrt.runtime.text.encoders import TextEncoders

# Required besides the text encoders and the family's denoiser; vae_encoder loads on the first
# image-to-image request.
COMPONENTS = ("vae_decoder",)
__all__ = ["GenerationCancelled", "GenerationResult", "Pipeline"]


class Pipeline:
    """A loaded model. Shared by all calls, and safe to share between threads: the engines
    (ONNX Runtime sessions run concurrently; the VAE encoder is loaded once, under a lock, by
    the first image-to-image request), the tokenizer (its word cache is locked), the manifest
    and the scheduler config. Per call: the sampler and its history, the random generator,
    the latents and every intermediate array."""

    def __init__(
        self,
        folder: Path,
        manifest: Manifest,
        text_encoders: TextEncoders,
        scheduler_config: dict,
        loaded: LoadedEngines,
        options: LoadOptions = LoadOptions(),
        loras: LoraLibrary | None = None,
        controlnet_dir: str | Path | None = None,
    ):
        self.folder = folder
        self.manifest = manifest
        self.family = manifest.model_family
        self.text_encoders = text_encoders
        self.tokenizer = text_encoders.tokenizers[0]
        self.refiner: Pipeline | None = None  # an SDXL refiner (attach_refiner)
        self.scheduler_config = scheduler_config
        self.engines = loaded.engines
        self.backend = backend = loaded.backend
        self._make_engine = make_engine = loaded.make_engine
        self._engine_lock = threading.Lock()
        engines = self.engines
        self.loras = LoraAdapters(
            folder,
            manifest,
            engines,
            lambda component, weights: backend.weight_variants(
                component, engines[component], make_engine, weights.pristine, LoadedFolder(folder, manifest, options)
            ),
            loras or LoraLibrary(),
        )
        self.controlnets = ControlNetLibrary(
            manifest,
            folder.name,
            lambda path, spec: backend.attached_engine(path, spec, CONTROLNET, options, engines),
            controlnet_dir,
        )

    @classmethod
    def load(
        cls,
        folder: str | Path,
        backend: str | Backend = DEFAULT_BACKEND,
        threads: int | None = None,
        progress: Callable[[str], None] | None = None,
        io_binding: bool | None = None,
        cuda_graph: bool = False,
        refiner: str | Path | None = None,
        embeddings: Sequence[str | Path | EmbeddingSource] | None = None,
        lora_dir: str | Path | None = None,
        lora_cache_mb: int = DEFAULT_LORA_CACHE_MB,
        controlnet_dir: str | Path | None = None,
    ) -> Pipeline:
        """Load an exported folder (with manifest.json, or a diffusers ONNX folder without one).
        `backend` is cpu or cuda (ONNX Runtime) or tensorrt (engines from `sdrt build`, rebuilt
        with a message through `progress` when stale). On ONNX Runtime, `io_binding` (the
        default on cuda) keeps buffers on the device and reuses them per shape; `cuda_graph`
        (cuda only) also captures the UNet once per shape and replays it (see BoundOrtEngine).
        `refiner`: an SDXL refiner's folder, loaded the same way (see attach_refiner).
        `embeddings`: textual-inversion files (PATH or PATH:TOKEN) and folders of them
        (sdrt.runtime.text.embeddings), for the base model and the refiner. `lora_dir`: the folder
        `<lora:NAME>` tags name files in; `lora_cache_mb`: memory for LoRA-merged sessions per
        component (ONNX Runtime; sdrt.runtime.features.lora). `controlnet_dir`: the folder of exported
        ControlNets requests name (sdrt.runtime.features.controlnet)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ModelFolderError(
                f"model folder {folder} does not exist; export one with `sdrt export MODEL --out {folder}`"
            )
        backend = backend_named(backend)
        options = LoadOptions(
            threads=threads,
            io_binding=io_binding,
            cuda_graph=cuda_graph,
            progress=progress,
            lora_cache_mb=lora_cache_mb,
        )
        library = LoraLibrary(lora_dir)
        sessions: dict = {}
        if present(folder / MANIFEST_NAME, ModelFolderError):
            manifest = Manifest.load(folder)
        elif not backend.infers_manifest:
            raise ModelFolderError(
                f"{folder} has no manifest.json, which {backend.name} needs; export it with `sdrt export`"
            )
        else:
            manifest, sessions = infer_manifest(
                folder, lambda path: backend.open_session(path, options), backend.session_tensors
            )
        required = [name for name, _ in manifest.text_encoders] + [
            manifest.model_family.denoiser.component,
            *COMPONENTS,
        ]
        for name in required:
            if name not in manifest.components:
                raise ModelFolderError(f"{folder} lacks {name}; re-export it with `sdrt export`")
        # Required engines load now; an optional one only if inferring the manifest opened it.
        loaded = [name for name in manifest.components if name in required or name in sessions]
        verify_components(folder, manifest, loaded)
        scheduler_path = folder / "scheduler" / "scheduler_config.json"
        if not present(scheduler_path, ModelFolderError):
            raise ModelFolderError(f"{scheduler_path} is missing; re-export the model")
        scheduler_config = read_json(scheduler_path)
        try:
            sampler_from_config(
                manifest.model_family.default_sampler, scheduler_config
            )  # every field's type and range, now
        except ConfigError as error:
            raise ModelFolderError(f"{scheduler_path}: {error}") from None
        manifest, make_engine = backend.load(folder, manifest, options, sessions)
        sources = [e if isinstance(e, EmbeddingSource) else EmbeddingSource.parse(str(e)) for e in embeddings or ()]
        # After the backend: its profile limits prompts.
        text_encoders = manifest.model_family.load_text_encoders(folder, manifest, sources)
        engines = {name: make_engine(name) for name in loaded}
        pipeline = cls(
            folder,
            manifest,
            text_encoders,
            scheduler_config,
            LoadedEngines(engines, backend, make_engine),
            options,
            library,
            controlnet_dir,
        )
        if refiner is not None:
            pipeline.attach_refiner(
                cls.load(refiner, backend, threads, progress, io_binding, cuda_graph, embeddings=embeddings)
            )
        return pipeline

    def attach_refiner(self, refiner: Pipeline) -> None:
        """Requests with a `refiner_switch` then hand their latents to `refiner` (sdrt.runtime.features.refiner)."""
        refiners.check_pair(self, refiner)
        self.refiner = refiner

    def optional_engine(self, name: str) -> Engine | None:
        """An engine only some requests need (the VAE encoder), loaded on first use: text-to-
        image never pays its memory or load time."""
        with self._engine_lock:
            if name not in self.engines:
                spec = self.manifest.components.get(name)
                if spec is None or not (self.folder / spec.file).is_file():
                    return None
                verify_components(self.folder, self.manifest, [name])
                self.engines[name] = self._make_engine(name)
            return self.engines[name]

    # ------------------------------------------------------------------ stages
    def encode_image(
        self, image: np.ndarray, generator: TorchGenerator, encoder: str = vae.DEFAULT_DECODER
    ) -> np.ndarray:
        """sdrt.runtime.vae.encode with the VAE's (or the tiny VAE's) encoder, loaded on first use."""
        engine = self.optional_engine(vae.ENCODERS[encoder])
        if engine is None:
            raise GenerationError(
                f"this export has no {vae.ENCODERS[encoder]}; re-export the model for image-to-image", "init_image"
            )
        return vae.encode(engine, self.manifest, image, generator, encoder)

    def decode_latents(self, latents: np.ndarray, decoder: str = vae.DEFAULT_DECODER) -> np.ndarray:
        """Images as float32 [batch, height, width, 3] in [0, 1] (sdrt.runtime.vae.decode); the
        tiny decoder loads on first use."""
        engine = self.optional_engine(vae.DECODERS[decoder])
        if engine is None:
            raise GenerationError("this export has no tiny VAE: re-export it with --tiny-vae SOURCE", "vae")
        return vae.decode(engine, self.manifest, latents, decoder)

    # ------------------------------------------------------------------ request
    def generate(
        self,
        prompt,
        *,
        progress: Callable[[int, int], None] | None = None,
        cancel: threading.Event | None = None,
        **settings,
    ) -> GenerationResult:
        """`run(GenerationRequest(prompt, **settings))`: see GenerationRequest for the settings."""
        try:
            request = GenerationRequest(prompt, **settings)
        except TypeError as error:
            raise GenerationError(f"unknown generation setting: {error}") from None
        return self.run(request, progress=progress, cancel=cancel)

    def run(
        self,
        request: GenerationRequest,
        progress: Callable[[int, int], None] | None = None,
        cancel: threading.Event | None = None,
        preview: Preview | None = None,
        latents_only: bool = False,
    ) -> GenerationResult:
        """Generate `num_images` images per prompt. With a seed, the initial latents equal
        diffusers' with `torch.Generator("cpu").manual_seed(seed)`; without one, a seed is
        drawn and reported in `parameters`. One seed per prompt (text-to-image): each prompt's
        images then equal a call with that prompt and seed alone, which is how a server
        batches requests into one UNet call. `preview` decodes the latents every N steps.
        `latents_only`: no VAE decode (diffusers' output_type="latent"): `latents`, no images."""
        watch = RunWatch(progress, cancel, preview)
        if runs_per_image(request):  # one seed per image, from an image or with the hires fix
            return per_image_run(self, request, watch)
        if request.hires is not None or (request.mask_options is not None and request.mask_image is not None):
            try:
                return (hires_run if request.hires is not None else masked_run)(self, request, watch)
            except GenerationCancelled as stopped:
                stopped.partial = None  # a pass's latents are not the request's image
                raise
        started = time.perf_counter()
        warnings: list[str] = []
        resolved = request.resolve(self.manifest)
        loras: list = []

        def finish(result: GenerationResult) -> GenerationResult:
            refiner = self.refiner.folder.name if request.refiner_switch is not None else None  # ran: loaded
            result.parameters = generation_parameters(resolved, self.folder.name, result.parameters, refiner, loras)
            result.parameters.update(settings_parameters(request, self.scheduler_config, resolved.from_image))
            if self.family.distilled_guidance(self.manifest):  # Forge's record of FLUX.1 dev's guidance
                result.parameters["distilled_guidance"] = result.parameters["guidance_scale"]
            if not self.family.takes_strength(self.manifest):  # Kontext's image is a reference, never noised
                result.parameters.pop("strength", None)
            result.timings.set(TOTAL, time.perf_counter() - started)
            return result

        try:
            with self.loras.use(resolved.loras, warnings, request.confined_names) as (engines, loras):
                result = run_resolved(self, resolved, engines, watch, warnings, latents_only)
        except GenerationCancelled as stopped:
            made = stopped.partial
            if made is not None:  # the images so far, reported as the request's
                stopped.partial = lambda: finish(made())
            raise
        return finish(result)

    def new_sampler(self, request: GenerationRequest, resolved: ResolvedRequest | None = None) -> Scheduler:
        """The request's sampler with its tables (the family's: FLUX's shift reads the size)."""
        sampler = sampler_from_config(request.sampler, self.scheduler_config, request.schedule)
        if isinstance(sampler, KDiffusionSampler):  # A1111's Align Your Steps levels are SDXL's for SDXL
            sampler.sdxl = isinstance(self.manifest.model_family, StableDiffusionXL)
        if request.eta is not None:
            sampler.eta = request.eta
        if request.discard_penultimate_sigma and getattr(sampler, "takes_discard_option", False):
            sampler.always_discard = True  # type: ignore[attr-defined]
        if isinstance(sampler, KDiffusionSampler) and sampler.takes_a1111_settings:
            sampler.settings = request.sampler_settings
        if request.ksampler_steps is not None:
            if not isinstance(sampler, ComfyRules):
                raise GenerationError("ksampler_steps are for ComfyUI's samplers (comfy_*)", "ksampler_steps")
            sampler.ksampler_steps = request.ksampler_steps
        try:
            self.family.set_timesteps(sampler, request.steps, self.manifest, resolved)
        except ConfigError as error:
            raise GenerationError(str(error), "steps") from None
        return sampler
