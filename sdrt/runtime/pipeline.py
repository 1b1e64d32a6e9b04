"""Generation on exported engines: encode prompts, prepare latents, denoise, decode.

`Pipeline.load(folder, backend=..., threads=...)` takes the load-time settings and builds the
engines once; `run(GenerationRequest)` (or `generate(prompt, **settings)`) takes the per-request
settings. The numerics follow diffusers' `StableDiffusionPipeline` step for step, so the same
model, prompt, settings and seed give the same image (tests/runtime/test_pipeline.py compares them).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from sdrt.errors import ConfigError, ModelFolderError
from sdrt.runtime.embeddings import EmbeddingSource
from sdrt.runtime.engines import DEFAULT_BACKEND, DEFAULT_LORA_CACHE_MB, Backend, Engine, LoadOptions, backend_named
from sdrt.runtime.controlnet.library import ControlNetLibrary
from sdrt.runtime.controlnet.manifest import COMPONENT as CONTROLNET
from sdrt.runtime.integrity import verify_components
from sdrt.runtime.lora.adapters import LoraAdapters
from sdrt.runtime.lora.library import LoraLibrary
from sdrt.runtime.json_files import read_json
from sdrt.runtime.manifest import MANIFEST_NAME, UNET_SHALLOW, Manifest
from sdrt.runtime.model_folder import infer_manifest
from sdrt.runtime import modes, refiner as refiners, vae
from sdrt.runtime.conditioning import UnetConditioning, unet_conditioning
from sdrt.runtime.parameters import generation_parameters
from sdrt.runtime.preview import Preview
from sdrt.runtime.request import GenerationError, GenerationRequest, ResolvedRequest
from sdrt.runtime.rng import GeneratorGroup, TorchGenerator
from sdrt.runtime.schedulers import DEFAULT_SAMPLER, Scheduler, sampler_from_config
from sdrt.runtime.text_encoders import TextEncoders
from sdrt.runtime.denoise import GenerationCancelled, denoise_loop
from sdrt.runtime.deepcache import StepCachedUnet
from sdrt.runtime.hires import hires_run
from sdrt.runtime.inpaint_area import masked_run

# Required besides the text encoders; vae_encoder loads on the first image-to-image request.
COMPONENTS = ("unet", "vae_decoder")
PIXEL_LEVELS = 255
__all__ = ["GenerationCancelled", "GenerationResult", "Pipeline"]


@dataclass
class GenerationResult:
    images: list[Image.Image]
    array: np.ndarray  # float32 [batch, height, width, 3] in [0, 1], before 8-bit rounding
    parameters: dict
    timings: dict  # seconds per stage; "unet_steps" lists every UNet call
    warnings: list[str] = field(default_factory=list)
    latents: np.ndarray | None = None  # the final latents, before the VAE decode


class Pipeline:
    """A loaded model. Shared by all calls, and safe to share between threads: the engines
    (ONNX Runtime sessions run concurrently; the VAE encoder is loaded once, under a lock, by
    the first image-to-image request), the tokenizer (its word cache is locked), the manifest
    and the scheduler config. Per call: the sampler and its history, the random generator,
    the latents and every intermediate array."""

    def __init__(self, folder: Path, manifest: Manifest, text_encoders: TextEncoders, scheduler_config: dict,
                 engines: dict[str, Engine], backend: Backend, make_engine: Callable[[str], Engine],
                 options: LoadOptions = LoadOptions(), loras: LoraLibrary | None = None,
                 controlnet_dir: str | Path | None = None):
        self.folder = folder
        self.manifest = manifest
        self.text_encoders = text_encoders
        self.tokenizer = text_encoders.tokenizers[0]
        self.refiner: Pipeline | None = None  # an SDXL refiner (attach_refiner)
        self.scheduler_config = scheduler_config
        self.engines = engines
        self.backend = backend
        self._make_engine = make_engine
        self._engine_lock = threading.Lock()
        self.loras = LoraAdapters(folder, manifest, engines, lambda component, weights: backend.weight_variants(
            folder, manifest, component, engines[component], make_engine, weights.pristine, options),
            loras or LoraLibrary())
        self.controlnets = ControlNetLibrary(manifest, folder.name, lambda path, spec: backend.attached_engine(
            path, spec, CONTROLNET, options, engines), controlnet_dir)

    @classmethod
    def load(cls, folder: str | Path, backend: str | Backend = DEFAULT_BACKEND, threads: int | None = None,
             progress: Callable[[str], None] | None = None, io_binding: bool | None = None,
             cuda_graph: bool = False, refiner: str | Path | None = None,
             embeddings: Sequence[str | Path | EmbeddingSource] | None = None, lora_dir: str | Path | None = None,
             lora_cache_mb: int = DEFAULT_LORA_CACHE_MB, controlnet_dir: str | Path | None = None) -> "Pipeline":
        """Load an exported folder (with manifest.json, or a diffusers ONNX folder without one).
        `backend` is cpu or cuda (ONNX Runtime) or tensorrt (engines from `sdrt build`, rebuilt
        with a message through `progress` when stale). On ONNX Runtime, `io_binding` (the
        default on cuda) keeps buffers on the device and reuses them per shape; `cuda_graph`
        (cuda only) also captures the UNet once per shape and replays it (see BoundOrtEngine).
        `refiner`: an SDXL refiner's folder, loaded the same way (see attach_refiner).
        `embeddings`: textual-inversion files (PATH or PATH:TOKEN) and folders of them
        (sdrt.runtime.embeddings), for the base model and the refiner. `lora_dir`: the folder
        `<lora:NAME>` tags name files in; `lora_cache_mb`: memory for LoRA-merged sessions per
        component (ONNX Runtime; sdrt.runtime.lora). `controlnet_dir`: the folder of exported
        ControlNets requests name (sdrt.runtime.controlnet)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ModelFolderError(
                f"model folder {folder} does not exist; export one with `sdrt export MODEL --out {folder}`"
            )
        backend = backend_named(backend)
        options = LoadOptions(threads=threads, io_binding=io_binding, cuda_graph=cuda_graph, progress=progress,
                              lora_cache_mb=lora_cache_mb)
        library = LoraLibrary(lora_dir)
        sessions: dict = {}
        if (folder / MANIFEST_NAME).is_file():
            manifest = Manifest.load(folder)
        elif not backend.infers_manifest:
            raise ModelFolderError(f"{folder} has no manifest.json, which {backend.name} needs; export it with "
                                   "`sdrt export`")
        else:
            manifest, sessions = infer_manifest(folder, lambda path: backend.open_session(path, options))
        required = [name for name, _ in manifest.text_encoders] + list(COMPONENTS)
        for name in required:
            if name not in manifest.components:
                raise ModelFolderError(f"{folder} lacks {name}; re-export it with `sdrt export`")
        # Required engines load now; an optional one only if inferring the manifest opened it.
        loaded = [name for name in manifest.components if name in required or name in sessions]
        verify_components(folder, manifest, loaded)
        scheduler_path = folder / "scheduler" / "scheduler_config.json"
        if not scheduler_path.is_file():
            raise ModelFolderError(f"{scheduler_path} is missing; re-export the model")
        scheduler_config = read_json(scheduler_path)
        try:
            sampler_from_config(DEFAULT_SAMPLER, scheduler_config)  # every field's type and range, now
        except ConfigError as error:
            raise ModelFolderError(f"{scheduler_path}: {error}") from None
        manifest, make_engine = backend.load(folder, manifest, options, sessions)
        sources = [e if isinstance(e, EmbeddingSource) else EmbeddingSource.parse(str(e)) for e in embeddings or ()]
        text_encoders = TextEncoders.load(folder, manifest, sources)  # after the backend: its profile limits prompts
        engines = {name: make_engine(name) for name in loaded}
        pipeline = cls(folder, manifest, text_encoders, scheduler_config, engines, backend, make_engine, options,
                       library, controlnet_dir)
        if refiner is not None:
            pipeline.attach_refiner(cls.load(refiner, backend, threads, progress, io_binding, cuda_graph,
                                             embeddings=embeddings))
        return pipeline

    def attach_refiner(self, refiner: "Pipeline") -> None:
        """Requests with a `refiner_switch` then hand their latents to `refiner` (sdrt.runtime.refiner)."""
        refiners.check_pair(self, refiner)
        self.refiner = refiner

    def _optional_engine(self, name: str) -> Engine | None:
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
    def encode_image(self, image: np.ndarray, generator: TorchGenerator, encoder: str = vae.DEFAULT_DECODER) -> np.ndarray:
        """sdrt.runtime.vae.encode with the VAE's (or the tiny VAE's) encoder, loaded on first use."""
        engine = self._optional_engine(vae.ENCODERS[encoder])
        if engine is None:
            raise GenerationError(f"this export has no {vae.ENCODERS[encoder]}; re-export the model for image-to-image",
                                  "init_image")
        return vae.encode(engine, self.manifest, image, generator, encoder)

    def denoise(self, start: modes.DenoiseStart, conditioning: UnetConditioning, sampler: Scheduler,
                guidance_scale: float, generator: TorchGenerator | GeneratorGroup,
                progress: Callable[[int, int], None] | None = None, timings: dict | None = None,
                cancel: threading.Event | None = None, engines: dict[str, Engine] | None = None,
                control=None, after_step: Callable[[int, int, np.ndarray], None] | None = None) -> np.ndarray:
        """The denoising loop over UNet calls `start.start` (image-to-image skips the first) to
        `start.end`; `conditioning` gives the UNet's feeds besides the latents and timestep at
        each step ([unconditional; conditional] with guidance, sdrt.runtime.conditioning), in
        one call or in one per text length. Stochastic samplers draw from `generator`, after
        the initial latents, as in diffusers. `start.conditioning` (an inpainting UNet's mask
        and masked-image latents) is appended to the scaled input's channels;
        `start.blend(index, latents)` runs after each step. With `timings`, each UNet call's
        duration is appended to timings["unet_steps"], and timings["unet_host_copies"] adds up
        the host-device copies inside those calls (the ControlNets' time goes to
        timings["controlnet_steps"]). A set `cancel` stops the loop at the next
        step with GenerationCancelled. `engines` replaces the pipeline's (LoRA-merged ones).
        `control` gives each call's ControlNet residuals (sdrt.runtime.controlnet.guidance;
        without it a UNet with residual inputs gets zeros from its engine). `after_step(step,
        total, latents)` runs after each step (previews, sdrt.runtime.preview)."""
        return denoise_loop((engines or self.engines)["unet"], start, conditioning, sampler, guidance_scale,
                            generator, progress, timings, cancel, control, after_step)

    def decode_latents(self, latents: np.ndarray, decoder: str = vae.DEFAULT_DECODER) -> np.ndarray:
        """Images as float32 [batch, height, width, 3] in [0, 1] (sdrt.runtime.vae.decode); the
        tiny decoder loads on first use."""
        engine = self._optional_engine(vae.DECODERS[decoder])
        if engine is None:
            raise GenerationError("this export has no tiny VAE: re-export it with --tiny-vae SOURCE", "vae")
        return vae.decode(engine, self.manifest, latents, decoder)

    # ------------------------------------------------------------------ request
    def generate(self, prompt, *, progress: Callable[[int, int], None] | None = None,
                 cancel: threading.Event | None = None, **settings) -> GenerationResult:
        """`run(GenerationRequest(prompt, **settings))`: see GenerationRequest for the settings."""
        try:
            request = GenerationRequest(prompt, **settings)
        except TypeError as error:
            raise GenerationError(f"unknown generation setting: {error}") from None
        return self.run(request, progress=progress, cancel=cancel)

    def run(self, request: GenerationRequest, progress: Callable[[int, int], None] | None = None,
            cancel: threading.Event | None = None, preview: Preview | None = None,
            latents_only: bool = False) -> GenerationResult:
        """Generate `num_images` images per prompt. With a seed, the initial latents equal
        diffusers' with `torch.Generator("cpu").manual_seed(seed)`; without one, a seed is
        drawn and reported in `parameters`. One seed per prompt (text-to-image): each prompt's
        images then equal a call with that prompt and seed alone, which is how a server
        batches requests into one UNet call. `preview` decodes the latents every N steps.
        `latents_only`: no VAE decode (diffusers' output_type="latent"): `latents`, no images."""
        if request.hires is not None:
            return hires_run(self, request, progress=progress, cancel=cancel, preview=preview)
        if request.mask_options is not None and request.mask_image is not None:
            return masked_run(self, request, progress=progress, cancel=cancel, preview=preview)
        started = time.perf_counter()
        warnings: list[str] = []
        resolved = request.resolve(self.manifest)
        with self.loras.use(resolved.loras, warnings) as (engines, loras):
            result = self._run(resolved, engines, progress, cancel, warnings, preview, latents_only)
        refiner = self.refiner.folder.name if request.refiner_switch is not None else None
        result.parameters = generation_parameters(resolved, self.folder.name, result.parameters, refiner, loras)
        result.timings["total"] = time.perf_counter() - started
        return result

    def _run(self, resolved: ResolvedRequest, engines: dict[str, Engine], progress, cancel,
             warnings: list[str], preview: Preview | None = None, latents_only: bool = False) -> GenerationResult:
        """run() on the request's engines; its parameters are the embeddings it used."""
        request = resolved.request
        timings: dict[str, float] = {}
        if resolved.per_prompt_seeds:
            generator = GeneratorGroup([TorchGenerator(value) for value in resolved.seeds], request.num_images)
        else:
            generator = TorchGenerator(resolved.seeds[0])
        stage = time.perf_counter()
        conditioning = unet_conditioning(self.text_encoders, engines, resolved, warnings, timings)
        timings["text_encoder"] = time.perf_counter() - stage
        sampler = self.new_sampler(request)
        if request.deepcache is not None:
            engines = {**engines, "unet": StepCachedUnet(engines["unet"], self._optional_engine(UNET_SHALLOW),
                                                         sampler.timesteps, request.deepcache.interval)}
        start = modes.prepare(self.manifest, resolved, sampler, generator, timings,
                              lambda image, draw: self.encode_image(image, draw, request.vae))
        control = self.controlnets.prepare(
            resolved.controls, resolved.height, resolved.width, start.start, start.stop(sampler) - start.start,
            conditioning.guided, resolved.batch * (2 if conditioning.guided else 1), engines["unet"], warnings)
        runs = [(self, start, sampler, conditioning, control)]
        if request.refiner_switch is not None:
            runs.append(refiners.refiner_run(self.refiner, resolved, runs[0], timings))

        stage = time.perf_counter()
        latents, done, total = None, 0, sum(start.stop(s) - start.start for _, start, s, _, _ in runs)
        for model, start, run_sampler, run_conditioning, run_control in runs:
            if start.latents is None:  # the refiner continues from the base's latents
                start.latents = latents
            step_progress = None if progress is None else lambda i, _, done=done: progress(done + i, total)
            hook = None if preview is None else preview.hook(self, timings)
            after_step = None if hook is None else lambda i, _, x, done=done: hook(done + i, total, x)
            latents = model.denoise(start, run_conditioning, run_sampler, request.guidance_scale, generator,
                                    step_progress, timings, cancel, engines if model is self else None, run_control,
                                    after_step)
            done += start.stop(run_sampler) - start.start
        timings["denoise"] = time.perf_counter() - stage
        # Everything in the loop but the UNet and the ControlNets: sampler, guidance, copies and casts.
        timings["scheduler_and_guidance"] = (timings["denoise"] - sum(timings["unet_steps"])
                                             - sum(timings.get("controlnet_steps", ())) - timings.get("previews", 0.0))

        stage = time.perf_counter()
        if latents_only:
            array = np.zeros((0, resolved.height, resolved.width, 3), dtype=np.float32)
        else:
            array = runs[-1][0].decode_latents(latents, request.vae)  # the refiner decodes with its own VAE
        timings["vae_decoder"] = time.perf_counter() - stage
        images = [Image.fromarray((image * PIXEL_LEVELS).round().astype(np.uint8)) for image in array]
        hashes = {e.name: e.short_hash for e in self.text_encoders.embeddings.loaded}
        return GenerationResult(images, array, {n: hashes[n] for n in conditioning.embeddings}, timings, warnings,
                                latents)

    def new_sampler(self, request: GenerationRequest) -> Scheduler:
        sampler = sampler_from_config(request.sampler, self.scheduler_config, request.schedule)
        if request.eta is not None:
            sampler.eta = request.eta
        try:
            sampler.set_timesteps(request.steps)
        except ConfigError as error:
            raise GenerationError(str(error), "steps") from None
        return sampler
