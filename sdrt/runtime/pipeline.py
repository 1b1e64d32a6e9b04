"""Text-to-image on exported engines: tokenize, encode, denoise with guidance, decode.

`Pipeline.load(folder, backend=..., threads=...)` takes the load-time settings and builds the
engines once; `generate(...)` takes the per-request settings. The numerics follow diffusers'
`StableDiffusionPipeline` step for step, so the same model, prompt, settings and seed give the
same image (tests/test_pipeline.py compares them).
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from sdrt.errors import ConfigError, ModelFolderError, SdrtError
from sdrt.runtime.engine import BACKENDS, TENSORRT, BoundOrtEngine, Engine, OrtEngine, open_session
from sdrt.runtime.images import (
    MASK_THRESHOLD,
    downsample_nearest,
    open_image,
    target_size,
    to_mask_input,
    to_model_input,
)
from sdrt.runtime.manifest import MANIFEST_NAME, Manifest
from sdrt.runtime.model_folder import infer_manifest
from sdrt.runtime.rng import GeneratorGroup, TorchGenerator
from sdrt.runtime.schedulers import SAMPLERS as SCHEDULERS, sampler_from_config as scheduler_from_config
from sdrt.runtime.tokenizer import ClipTokenizer

COMPONENTS = ("text_encoder", "unet", "vae_decoder")  # required; vae_encoder loads on first img2img
MAX_SEED = 2**32 - 1  # PyTorch's CPU generator keeps the low 32 bits of a seed
PIXEL_LEVELS = 255
# diffusers' default strengths: image-to-image keeps some of the image, inpainting repaints fully.
IMG2IMG_STRENGTH = 0.8
INPAINT_STRENGTH = 1.0


class GenerationError(SdrtError):
    """A request cannot be generated as asked (bad setting, or a NaN image)."""


@dataclass
class GenerationResult:
    images: list[Image.Image]
    array: np.ndarray  # float32 [batch, height, width, 3] in [0, 1], before 8-bit rounding
    parameters: dict
    timings: dict  # seconds per stage; "unet_steps" lists every UNet call
    warnings: list[str] = field(default_factory=list)


def nearest_multiples(value: int, multiple: int, low: int, high: int) -> list[int]:
    below = max(low, value // multiple * multiple)
    above = min(high, below + multiple)
    return sorted({below, above})


class Pipeline:
    """A loaded model. Shared by all calls, and safe to share between threads: the engines
    (ONNX Runtime sessions run concurrently; the VAE encoder is loaded once, under a lock, by
    the first image-to-image request), the tokenizer (its word cache is locked), the manifest
    and the scheduler config. Per call: the scheduler and its history, the random generator,
    the latents and every intermediate array."""

    def __init__(self, folder: Path, manifest: Manifest, tokenizer: ClipTokenizer, scheduler_config: dict,
                 engines: dict[str, Engine], backend: str, make_engine: Callable[[str], Engine]):
        self.folder = folder
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.scheduler_config = scheduler_config
        self.engines = engines
        self.backend = backend
        self._make_engine = make_engine
        self._engine_lock = threading.Lock()

    @classmethod
    def load(cls, folder: str | Path, backend: str = "cpu", threads: int | None = None,
             progress: Callable[[str], None] | None = None, io_binding: bool | None = None,
             cuda_graph: bool = False) -> "Pipeline":
        """Load an exported folder (with manifest.json, or a diffusers ONNX folder without one).
        `backend` is cpu or cuda (ONNX Runtime) or tensorrt (engines from `sdrt build`, rebuilt
        with a message through `progress` when stale). On ONNX Runtime, `io_binding` (the
        default on cuda) keeps buffers on the device and reuses them per shape; `cuda_graph`
        (cuda only) also captures the UNet once per shape and replays it (see BoundOrtEngine)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ModelFolderError(
                f"model folder {folder} does not exist; export one with `sdrt export MODEL --out {folder}`"
            )
        if backend not in BACKENDS:
            raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        sessions: dict = {}
        if (folder / MANIFEST_NAME).is_file():
            manifest = Manifest.load(folder)
        elif backend == TENSORRT:
            raise ModelFolderError(f"{folder} has no manifest.json, which TensorRT builds need; export it with "
                                   "`sdrt export`")
        else:
            manifest, sessions = infer_manifest(folder, lambda path: open_session(path, backend, threads))
        for name in COMPONENTS:
            if name not in manifest.components or not (folder / manifest.components[name].file).is_file():
                raise ModelFolderError(f"{folder} lacks {name}; re-export it with `sdrt export`")
        scheduler_path = folder / "scheduler" / "scheduler_config.json"
        if not scheduler_path.is_file():
            raise ModelFolderError(f"{scheduler_path} is missing; re-export the model")
        scheduler_config = json.loads(scheduler_path.read_text(encoding="utf-8"))
        tokenizer = ClipTokenizer.from_folder(folder / "tokenizer")
        if tokenizer.max_length != manifest.text_length:
            raise ModelFolderError(
                f"tokenizer length {tokenizer.max_length} differs from the text encoder's {manifest.text_length}"
            )
        if backend == TENSORRT:
            from sdrt.runtime.tensorrt_backend import load_engines

            runtime, manifest = load_engines(folder, manifest, progress)
            make_engine: Callable[[str], Engine] = runtime.engine
        else:
            if cuda_graph and backend != "cuda":
                raise ConfigError("CUDA graphs need the cuda backend")
            bound = backend == "cuda" if io_binding is None else io_binding
            if cuda_graph and not bound:
                raise ConfigError("CUDA graphs need IO binding; leave io_binding on")

            def make_engine(name: str) -> Engine:
                spec = manifest.components[name]
                if bound:
                    return BoundOrtEngine(folder / spec.file, name, spec, manifest.dims, backend=backend,
                                          threads=threads, session=sessions.get(name),
                                          cuda_graph=cuda_graph and name == "unet")
                return OrtEngine(folder / spec.file, name, spec, manifest.dims, backend=backend, threads=threads,
                                 session=sessions.get(name))

        # Required engines load now; an optional one only if inferring the manifest opened it.
        engines = {name: make_engine(name) for name in manifest.components if name in COMPONENTS or name in sessions}
        return cls(folder, manifest, tokenizer, scheduler_config, engines, backend, make_engine)

    def _optional_engine(self, name: str) -> Engine | None:
        """An engine only some requests need (the VAE encoder), loaded on first use: text-to-
        image never pays its memory or load time."""
        with self._engine_lock:
            if name not in self.engines:
                spec = self.manifest.components.get(name)
                if spec is None or not (self.folder / spec.file).is_file():
                    return None
                self.engines[name] = self._make_engine(name)
            return self.engines[name]

    # ------------------------------------------------------------------ request checks
    def _check_size(self, name: str, value: int, dim: str) -> None:
        valid = self.manifest.dims.get(dim)
        if valid is None or valid.contains(value):
            return
        if not isinstance(value, int) or value < 1:
            raise GenerationError(f"{name} must be a positive integer, got {value!r}")
        if value % valid.multiple:
            options = " or ".join(str(v) for v in nearest_multiples(value, valid.multiple, valid.min, valid.max))
            raise GenerationError(
                f"{name} {value} is not a multiple of {valid.multiple}, which this model needs: use {options}"
            )
        raise GenerationError(f"{name} {value} is outside this export's range {valid.min}..{valid.max}")

    def _prompts(self, prompt: str | Sequence[str], negative_prompt) -> tuple[list[str], list[str]]:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise GenerationError("prompt must be a string or a non-empty list of strings")
        if negative_prompt is None:
            negatives = [""] * len(prompts)
        elif isinstance(negative_prompt, str):
            negatives = [negative_prompt] * len(prompts)
        else:
            negatives = list(negative_prompt)
            if len(negatives) != len(prompts) or not all(isinstance(n, str) for n in negatives):
                raise GenerationError(
                    f"negative_prompt has {len(negatives)} entries for {len(prompts)} prompts"
                )
        return prompts, negatives

    # ------------------------------------------------------------------ stages
    def encode_prompts(self, prompts: list[str], warnings: list[str], timings: dict | None = None) -> np.ndarray:
        """Text embeddings, float32 [len(prompts), text_length, hidden]."""
        started = time.perf_counter()
        tokens = self.tokenizer.encode(prompts)
        if timings is not None:
            timings["tokenize"] = timings.get("tokenize", 0.0) + time.perf_counter() - started
        for prompt, dropped in zip(prompts, tokens.dropped_text):
            if dropped:
                warnings.append(
                    f"the prompt is longer than {self.tokenizer.max_length - 2} tokens; "
                    f"this part was dropped: {dropped!r}"
                )
        engine = self.engines["text_encoder"]
        ids = tokens.input_ids.astype(engine.input_dtype("input_ids"))
        hidden = engine.run({"input_ids": ids})["last_hidden_state"]
        return hidden.astype(np.float32)

    def encode_image(self, image: np.ndarray, generator: TorchGenerator) -> np.ndarray:
        """Latents of an image in [-1, 1], sampled from the VAE's distribution with `generator`
        and scaled as the UNet expects."""
        engine = self._optional_engine("vae_encoder")
        if engine is None:
            raise GenerationError("this export has no vae_encoder; re-export the model for image-to-image")
        out = engine.run({"sample": image.astype(engine.input_dtype("sample"))})
        mean, std = out["latent_mean"].astype(np.float32), out["latent_std"].astype(np.float32)
        latents = mean + std * generator.randn(mean.shape)
        m = self.manifest
        return (latents - np.float32(m.vae_shift_factor)) * np.float32(m.vae_scaling_factor)

    def denoise(self, latents: np.ndarray, embeddings: np.ndarray, scheduler, guidance_scale: float,
                generator: TorchGenerator | GeneratorGroup, progress: Callable[[int, int], None] | None,
                start: int = 0, conditioning: np.ndarray | None = None,
                blend: Callable[[int, np.ndarray], np.ndarray] | None = None,
                timings: dict | None = None) -> np.ndarray:
        """The denoising loop from step `start` (image-to-image skips the first steps);
        `embeddings` holds [unconditional; conditional] with guidance. Stochastic samplers draw
        from `generator`, after the initial latents, as in diffusers. `conditioning` (an
        inpainting UNet's mask and masked-image latents) is appended to the scaled input's
        channels; `blend(index, latents)` runs after each step (inpainting with an ordinary UNet).
        With `timings`, each UNet call's duration is appended to timings["unet_steps"], and
        timings["unet_host_copies"] adds up the host-device copies inside those calls (engines
        that keep buffers on a device report them)."""
        engine = self.engines["unet"]
        guided = embeddings.shape[0] == 2 * latents.shape[0]
        sample_dtype = engine.input_dtype("sample")
        context = embeddings.astype(engine.input_dtype("encoder_hidden_states"))
        context.flags.writeable = False  # the same every step: a device-resident engine uploads it once
        unet_steps = timings.setdefault("unet_steps", []) if timings is not None else []
        total = len(scheduler.timesteps) - start
        for index in range(start, len(scheduler.timesteps)):
            timestep = scheduler.timesteps[index]
            model_input = np.concatenate([latents, latents]) if guided else latents
            model_input = scheduler.scale_model_input(model_input, index)
            if conditioning is not None:
                model_input = np.concatenate([model_input, conditioning], axis=1)
            feeds = {
                "sample": model_input.astype(sample_dtype),
                "timestep": np.array([timestep], dtype=engine.input_dtype("timestep")),
                "encoder_hidden_states": context,
            }
            called = time.perf_counter()
            prediction = engine.run(feeds)["out_sample"]
            unet_steps.append(time.perf_counter() - called)
            if timings is not None and hasattr(engine, "last_copy_seconds"):
                timings["unet_host_copies"] = timings.get("unet_host_copies", 0.0) + engine.last_copy_seconds
            prediction = prediction.astype(np.float32)
            if guided:
                unconditional, conditional = np.split(prediction, 2)
                prediction = unconditional + guidance_scale * (conditional - unconditional)
            latents = scheduler.step(prediction, index, latents, generator=generator)
            if blend is not None:
                latents = blend(index, latents)
            if progress is not None:
                progress(index - start + 1, total)
        return latents

    def decode_latents(self, latents: np.ndarray) -> np.ndarray:
        """Images as float32 [batch, height, width, 3] in [0, 1]."""
        engine = self.engines["vae_decoder"]
        scaled = latents / np.float32(self.manifest.vae_scaling_factor) + np.float32(self.manifest.vae_shift_factor)
        limit = self.manifest.dims["batch"].max if "batch" in self.manifest.dims else len(scaled)
        chunks = [
            engine.run({"latent_sample": scaled[i : i + limit].astype(engine.input_dtype("latent_sample"))})["sample"]
            for i in range(0, len(scaled), limit)
        ]
        image = np.concatenate(chunks).astype(np.float32)
        if not np.isfinite(image).all():
            raise GenerationError(
                "the VAE decoded NaN or infinite values (the fp16 VAE overflows): re-export with "
                "--vae-precision fp32"
            )
        image = np.clip(image / 2 + 0.5, 0, 1)
        return image.transpose(0, 2, 3, 1)

    def _prepare_inpainting(self, image, mask, height, width, shape, strength, steps, sampler, generator, guided):
        """Initial latents, first step, UNet conditioning and blend step of an inpainting run,
        drawing from `generator` in diffusers' order: image latents (when needed), noise, then
        the masked image's latents."""
        batch = shape[0]
        start = (steps - min(int(steps * strength), steps)) * sampler.calls_per_step
        if start >= len(sampler.timesteps):
            raise GenerationError(f"strength {strength} with {steps} steps leaves no denoising step; raise either")
        pixels = to_model_input(image, height, width)
        mask_pixels = to_mask_input(mask, image, height, width)
        ordinary_unet = self.manifest.unet_in_channels == self.manifest.latent_channels
        full_strength = strength == 1.0
        image_latents = None
        if ordinary_unet or not full_strength:
            image_latents = np.concatenate([self.encode_image(pixels, generator)] * batch)
        noise = generator.randn(shape)
        if full_strength:
            latents = noise * np.float32(sampler.init_noise_sigma)
        else:
            latents = sampler.add_noise(image_latents, noise, start)
        masked_latents = self.encode_image(pixels * (mask_pixels < MASK_THRESHOLD), generator)
        latent_mask = downsample_nearest(mask_pixels, shape[2], shape[3])
        latent_mask = np.concatenate([latent_mask] * batch)
        masked_latents = np.concatenate([masked_latents] * batch)
        if not ordinary_unet:
            conditioning = np.concatenate([latent_mask, masked_latents], axis=1)
            if guided:
                conditioning = np.concatenate([conditioning, conditioning])
            return latents, start, conditioning, None
        last = len(sampler.timesteps) - 1

        def blend(index: int, current: np.ndarray) -> np.ndarray:
            known = image_latents if index == last else sampler.add_noise(image_latents, noise, index + 1)
            return (1 - latent_mask) * known + latent_mask * current

        return latents, start, None, blend

    # ------------------------------------------------------------------ request
    def generate(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] | None = None,
        steps: int = 50,
        guidance_scale: float = 7.5,
        height: int | None = None,
        width: int | None = None,
        seed: int | Sequence[int] | None = None,
        num_images: int = 1,
        latents: np.ndarray | None = None,
        scheduler: str = "lms",
        progress: Callable[[int, int], None] | None = None,
        init_image: "str | Path | Image.Image | None" = None,
        strength: float | None = None,
        mask_image: "str | Path | Image.Image | None" = None,
    ) -> GenerationResult:
        """Generate `num_images` images per prompt. With `seed`, the initial latents equal
        diffusers' with `torch.Generator("cpu").manual_seed(seed)`; without one, a seed is
        drawn and reported in `parameters`. `latents` overrides the seeded noise. For text-to-
        image, `seed` may be a list with one seed per prompt: each prompt's images (initial noise
        and every stochastic sampler's draws) then equal a call with that prompt and seed alone,
        which is how a server batches requests into one UNet call.

        With `init_image` (image-to-image, as StableDiffusionImg2ImgPipeline): the image is
        encoded, noised to the level of step n - int(n * strength) (strength 0.8 by default),
        and denoised from there; see sdrt.runtime.images for how modes and sizes are handled.

        With `mask_image` too (inpainting, as StableDiffusionInpaintPipeline; strength 1 by
        default): an inpainting UNet (9 input channels) gets the mask and the masked image's
        latents with every call; an ordinary UNet denoises everything and, after each step, the
        kept region is replaced by the original latents noised to the next step's level."""
        started = time.perf_counter()
        timings: dict[str, float] = {}
        warnings: list[str] = []
        m = self.manifest
        inpainting_unet = m.unet_in_channels != m.latent_channels
        if inpainting_unet and mask_image is None:
            raise GenerationError(
                f"this is an inpainting model (UNet takes {m.unet_in_channels} channels): give it "
                "an init image and a mask"
            )
        if mask_image is not None and init_image is None:
            raise GenerationError("a mask needs an init image to inpaint")
        prompts, negatives = self._prompts(prompt, negative_prompt)
        image = mask = None
        if init_image is not None:
            image = open_image(init_image)
            multiple = m.dims["height"].multiple if "height" in m.dims else m.vae_scale_factor
            height, width = target_size(image, height, width, multiple)
            if strength is None:
                strength = INPAINT_STRENGTH if mask_image is not None else IMG2IMG_STRENGTH
            if not 0 < strength <= 1:
                raise GenerationError(f"strength must be in (0, 1], got {strength}")
        if mask_image is not None:
            mask = open_image(mask_image)
        height = m.native_height if height is None else height
        width = m.native_width if width is None else width
        self._check_size("height", height, "height")
        self._check_size("width", width, "width")
        if not isinstance(steps, (int, np.integer)) or steps < 1:
            raise GenerationError(f"steps must be a positive integer, got {steps!r}")
        if guidance_scale < 0:
            raise GenerationError(f"guidance scale must be >= 0, got {guidance_scale}")
        if not isinstance(num_images, (int, np.integer)) or num_images < 1:
            raise GenerationError(f"num_images must be a positive integer, got {num_images!r}")
        if scheduler not in SCHEDULERS:
            raise ConfigError(f"unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
        if seed is None:
            seed = random.SystemRandom().randint(0, MAX_SEED)
        per_prompt_seeds = isinstance(seed, (list, tuple, np.ndarray))
        seeds = list(seed) if per_prompt_seeds else [seed]
        for value in seeds:
            if not isinstance(value, (int, np.integer)) or not 0 <= value <= MAX_SEED:
                raise GenerationError(f"seed must be an integer from 0 to {MAX_SEED}, got {value!r}")
        if per_prompt_seeds:
            if len(seeds) != len(prompts):
                raise GenerationError(f"seed has {len(seeds)} entries for {len(prompts)} prompts")
            if image is not None:
                raise GenerationError("one seed per prompt works for text-to-image only; give one seed")

        batch = len(prompts) * num_images
        batch_range = m.dims.get("batch")
        if batch_range is not None and batch > batch_range.max:
            raise GenerationError(
                f"{batch} images at once exceed this export's batch limit of {batch_range.max}"
            )
        guided = guidance_scale > 1
        shape = (batch, m.latent_channels, height // m.vae_scale_factor, width // m.vae_scale_factor)

        stage = time.perf_counter()
        # diffusers repeats each prompt's embedding num_images times, consecutively.
        conditional = np.repeat(self.encode_prompts(prompts, warnings, timings), num_images, axis=0)
        embeddings = conditional
        if guided:
            unconditional = np.repeat(self.encode_prompts(negatives, [], timings), num_images, axis=0)
            embeddings = np.concatenate([unconditional, conditional])
        timings["text_encoder"] = time.perf_counter() - stage

        sampler = scheduler_from_config(scheduler, self.scheduler_config)
        sampler.set_timesteps(int(steps))
        if per_prompt_seeds:
            generator = GeneratorGroup([TorchGenerator(value) for value in seeds], num_images)
        else:
            generator = TorchGenerator(seed)
        start = 0
        conditioning = blend = None
        if mask is not None:
            stage = time.perf_counter()
            latents, start, conditioning, blend = self._prepare_inpainting(
                image, mask, height, width, shape, strength, int(steps), sampler, generator, guided)
            timings["vae_encoder"] = time.perf_counter() - stage
        elif image is not None:
            start = (int(steps) - min(int(steps * strength), int(steps))) * sampler.calls_per_step
            if start >= len(sampler.timesteps):
                raise GenerationError(
                    f"strength {strength} with {steps} steps leaves no denoising step; raise either"
                )
            stage = time.perf_counter()
            encoded = self.encode_image(to_model_input(image, height, width), generator)
            timings["vae_encoder"] = time.perf_counter() - stage
            encoded = np.concatenate([encoded] * batch) if encoded.shape[0] != batch else encoded
            latents = sampler.add_noise(encoded, generator.randn(shape), start)
        elif latents is None:
            latents = generator.randn(shape) * np.float32(sampler.init_noise_sigma)
        else:
            latents = np.asarray(latents, dtype=np.float32)
            if latents.shape != shape:
                raise GenerationError(f"latents must have shape {list(shape)}, got {list(latents.shape)}")
            latents = latents * np.float32(sampler.init_noise_sigma)

        stage = time.perf_counter()
        latents = self.denoise(latents, embeddings, sampler, guidance_scale, generator, progress, start,
                               conditioning, blend, timings)
        timings["denoise"] = time.perf_counter() - stage
        # Everything in the loop but the UNet: scheduler, guidance, copies and casts.
        timings["scheduler_and_guidance"] = timings["denoise"] - sum(timings["unet_steps"])

        stage = time.perf_counter()
        array = self.decode_latents(latents)
        timings["vae_decoder"] = time.perf_counter() - stage
        images = [Image.fromarray((image * PIXEL_LEVELS).round().astype(np.uint8)) for image in array]
        timings["total"] = time.perf_counter() - started
        parameters = {
            "prompt": prompts if len(prompts) > 1 else prompts[0],
            "negative_prompt": negative_prompt,
            "steps": int(steps),
            "guidance_scale": float(guidance_scale),
            "seed": [int(value) for value in seeds] if per_prompt_seeds else int(seed),
            "height": int(height),
            "width": int(width),
            "num_images": int(num_images),
            "scheduler": scheduler,
            "model": self.folder.name,
        }
        if image is not None:
            parameters["strength"] = float(strength)
        return GenerationResult(images, array, parameters, timings, warnings)
