"""A1111's routes around generation: what webuiapi and A1111 scripts list, set and stop
(samplers, schedulers, sd-models, options, interrupt, skip, sd-vae, upscalers, ...). The
generation routes themselves are in sdrt.serve.app."""

from __future__ import annotations

import asyncio
import os

from fastapi import Body as RawBody
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from sdrt.runtime.features.hires import UPSCALERS as HIRES_UPSCALERS
from sdrt.runtime.imaging.png_info import PARAMETERS_KEY, parse_parameters
from sdrt.runtime.schedulers import K_SCHEDULES, KDIFFUSION, sampler_entries
from sdrt.runtime.schedulers.schedules import SCHEDULES
from sdrt.serve.a1111 import open_base64_image, png_base64
from sdrt.serve.a1111_options import MODEL_OPTION
from sdrt.serve.schemas import RequestError
from sdrt.serve.upscale import UPSCALERS, upscale_batch_request, upscale_request

#: /proc/meminfo's fields (kB) that /sdapi/v1/memory reports.
MEMINFO = "/proc/meminfo"
KIB = 1024


def _memory() -> dict:
    fields = {}
    try:
        with open(MEMINFO, encoding="ascii") as file:
            for line in file:
                key, _, value = line.partition(":")
                fields[key] = int(value.split()[0]) * KIB
    except (OSError, ValueError, IndexError):
        return {"ram": {"error": "memory figures are not available on this system"}}
    total, free = fields.get("MemTotal", 0), fields.get("MemAvailable", 0)
    return {
        "ram": {"free": free, "used": total - free, "total": total},
        "cuda": {"error": "see the backend's own tools (sdrt reports no device memory here)"},
    }


def add_a1111_routes(app: FastAPI, service, catalog, settings) -> None:
    """`app.state.options` holds the A1111 options (sdrt.serve.a1111_options.A1111Options)."""

    def current_model():
        models = catalog.models()
        return next((m for m in models if catalog.is_served(m, service.pipeline.folder)), models[0])

    @app.get("/sdapi/v1/embeddings")
    async def embeddings():
        """A1111's listing: the loaded textual-inversion embeddings, and those skipped with why."""
        found = service.pipeline.text_encoders.embeddings
        loaded = {
            e.name: {
                "step": None,
                "sd_checkpoint": None,
                "sd_checkpoint_name": None,
                "shape": int(next(iter(e.vectors.values())).shape[1]),
                "vectors": e.count,
            }
            for e in found.loaded
        }
        skipped = {
            name: {
                "step": None,
                "sd_checkpoint": None,
                "sd_checkpoint_name": None,
                "shape": None,
                "vectors": None,
                "reason": reason,
            }
            for name, reason in found.skipped.items()
        }
        return {"loaded": loaded, "skipped": skipped}

    @app.get("/sdapi/v1/loras")
    async def loras():
        """A1111's listing: the LoRAs of --lora-dir that <lora:NAME:WEIGHT> tags can name."""
        listed = []
        for lora in await asyncio.to_thread(service.pipeline.loras.library.listing):
            entry = {"name": lora.name, "alias": lora.name, "path": str(lora.path), "metadata": lora.metadata}
            listed.append(entry if lora.bad is None else {**entry, "bad": lora.bad})
        return listed

    @app.post("/sdapi/v1/refresh-loras")
    async def refresh_loras():
        """The folder is read at every request; nothing to refresh (A1111 clients call it)."""
        return None

    @app.get("/sdapi/v1/progress")
    async def progress(skip_current_image: bool = False):
        """A1111's progress of the running generation (current_image: with --preview-every)."""
        return service.progress.report(service.admitted, skip_current_image, png_base64)

    @app.get("/controlnet/model_list")
    async def controlnet_models():
        """The A1111 ControlNet extension's listing: the exported ControlNets of --controlnet-dir."""
        return {"model_list": list(service.pipeline.controlnets.names())}

    @app.get("/controlnet/module_list")
    async def controlnet_modules():
        from sdrt.runtime.features.controlnet.preprocess import PREPROCESSORS

        return {"module_list": list(PREPROCESSORS)}

    @app.get("/controlnet/version")
    async def controlnet_version():
        """The extension's API version (webuiapi's controlnet_version reads it)."""
        from sdrt.serve.a1111_controlnet import CONTROLNET_API_VERSION

        return {"version": CONTROLNET_API_VERSION}

    @app.post("/controlnet/detect")
    def controlnet_detect(body: dict = RawBody(...)):  # plain def: FastAPI runs it off the event loop
        """The extension's preprocessor preview: sdrt's preprocessors over a list of images."""
        from sdrt.serve.a1111_controlnet import detect

        answer = detect(body)
        return {**answer, "images": [png_base64(image) for image in answer["images"]]}

    @app.get("/sdapi/v1/samplers")
    async def samplers():
        # A1111's text-to-image names: the k-diffusion family's labels, then the diffusers-equal
        # samplers whose labels it does not have (DDIM, PLMS, UniPC, ...).
        space = service.pipeline.manifest.sampler_space
        k_entries = sampler_entries(space, KDIFFUSION)
        k_labels = {entry.display_name for entry in k_entries}
        return [
            {"name": entry.display_name, "aliases": [n for n in (entry.name, entry.comfy_name) if n], "options": {}}
            for entry in (*k_entries, *(e for e in sampler_entries(space) if e.display_name not in k_labels))
        ]

    @app.get("/sdapi/v1/schedulers")
    async def schedulers():
        return [
            {"name": entry.name, "label": entry.label, "aliases": None, "default_rho": -1, "need_inner_model": False}
            for entry in (*K_SCHEDULES.values(), *(e for e in SCHEDULES.values() if e.name not in K_SCHEDULES))
        ]

    @app.get("/sdapi/v1/sd-models")
    async def sd_models():
        return [model.describe() for model in catalog.models()]

    @app.post("/sdapi/v1/refresh-checkpoints")
    async def refresh_checkpoints():
        return None  # the models folder is read at every listing

    @app.get("/sdapi/v1/options")
    async def get_options():
        model = current_model()
        return app.state.options.report(model.title, model.sha256 or None, settings.preview_every)

    @app.post("/sdapi/v1/options")
    async def set_options(changes: dict = RawBody(...)):
        options = app.state.options.changed(changes, "options")
        if MODEL_OPTION in changes:
            await switch_to(changes[MODEL_OPTION], f"options.{MODEL_OPTION}")
        app.state.options = options
        return None

    async def switch_to(name, param: str) -> None:
        """The admin action: the model A1111 names `name` is the server's default from now on
        (requests that name their own model are not affected)."""
        model = await run_in_threadpool(catalog.named, name, param)
        if not catalog.is_served(model, service.pipeline.folder):
            await service.switch_model(model.folder)

    @app.post("/sdapi/v1/interrupt")
    async def interrupt():
        """Stops the running A1111 generation (never another API's job)."""
        service.stop_running("interrupt")
        return None

    @app.post("/sdapi/v1/skip")
    async def skip():
        """Skips the running A1111 generation's image set (never another API's job)."""
        service.stop_running("skip")
        return None

    @app.get("/sdapi/v1/sd-vae")
    async def sd_vae():
        if service.pipeline.manifest.tiny_vae is None:
            return []
        return [{"model_name": "TAESD", "filename": "vae_decoder_tiny"}]

    @app.post("/sdapi/v1/refresh-vae")
    async def refresh_vae():
        return None

    @app.get("/sdapi/v1/upscalers")
    async def upscalers():
        return [
            {"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4} for name in UPSCALERS
        ]

    @app.get("/sdapi/v1/latent-upscale-modes")
    async def latent_upscale_modes():
        return [{"name": name} for name, (kind, _) in HIRES_UPSCALERS.items() if kind == "latent"]

    @app.post("/sdapi/v1/extra-single-image")
    def extra_single_image(body: dict = RawBody(...)):  # plain def: FastAPI runs it off the event loop
        image, info = upscale_request(body)
        return {"image": png_base64(image), "html_info": info}

    @app.post("/sdapi/v1/extra-batch-images")
    def extra_batch_images(body: dict = RawBody(...)):  # plain def: FastAPI runs it off the event loop
        images, info = upscale_batch_request(body, settings.max_images)
        return {"images": [png_base64(image) for image in images], "html_info": info}

    @app.post("/sdapi/v1/interrogate")
    async def interrogate():
        raise RequestError(501, "interrogate needs a captioning model (CLIP or DeepDanbooru), which sdrt does not ship")

    @app.post("/sdapi/v1/png-info")
    def png_info(body: dict = RawBody(...)):  # plain def: FastAPI runs it off the event loop
        text = open_base64_image(body.get("image"), "image").info.get(PARAMETERS_KEY)
        if text is None:
            return {"info": "", "items": {}, "parameters": {}}
        return {"info": text, "items": {PARAMETERS_KEY: text}, "parameters": parse_parameters(text)}

    @app.get("/sdapi/v1/memory")
    async def memory():
        return _memory()

    @app.get("/sdapi/v1/cmd-flags")
    async def cmd_flags():
        return {
            "api": True,
            "nowebui": True,
            "api_auth": bool(settings.api_auth),
            "api_key": bool(settings.api_key),
            "ckpt_dir": str(catalog.models_dir) if catalog.models_dir else None,
            "ckpt": str(catalog.first),
            "lora_dir": _folder(service.pipeline.loras.library),
            "controlnet_dir": _folder(service.pipeline.controlnets),
            "backend": service.pipeline.backend.name,
            "max_queue": settings.max_queue,
            "max_images": settings.max_images,
            "max_steps": settings.max_steps,
            "concurrency": settings.concurrency,
            "preview_every": settings.preview_every,
            "pid": os.getpid(),
        }

    @app.get("/sdapi/v1/scripts")
    async def scripts():
        names = ["controlnet"] if service.pipeline.controlnets.names() else []
        return {"txt2img": names, "img2img": list(names)}

    @app.get("/sdapi/v1/script-info")
    async def script_info():
        return []

    @app.get("/sdapi/v1/prompt-styles")
    async def prompt_styles():
        return [
            {"name": style.name, "prompt": style.prompt, "negative_prompt": style.negative_prompt}
            for style in app.state.styles.values()
        ]

    @app.get("/sdapi/v1/hypernetworks")
    async def hypernetworks():
        return []

    @app.get("/sdapi/v1/face-restorers")
    async def face_restorers():
        return []

    @app.get("/sdapi/v1/realesrgan-models")
    async def realesrgan_models():
        return []


def _folder(library) -> str | None:
    folder = getattr(library, "folder", None)
    return None if folder is None else str(folder)
