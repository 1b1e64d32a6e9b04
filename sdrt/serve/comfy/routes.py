"""ComfyUI's routes on sdrt's app: /prompt, /queue, /history, /interrupt, /view, /upload/image and
/upload/mask, /object_info, /system_stats, /embeddings, /models, and the websocket /ws?clientId=
with ComfyUI's messages. The HTTP routes sit behind the app's auth (its Guard); the websocket
checks the same credentials itself (the Guard passes websockets through)."""

from __future__ import annotations

import asyncio
import os
import platform
import sys
import uuid
from pathlib import Path

from fastapi import FastAPI, Request, UploadFile, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.datastructures import UploadFile as StarletteUpload

import sdrt
from sdrt.errors import SdrtError
from sdrt.serve.comfy import batch_nodes, dit_nodes, image_nodes, mask_nodes, sampler_nodes, sd_nodes  # noqa: F401  (registers the nodes)
from sdrt.serve.comfy.context import ComfyContext
from sdrt.serve.comfy.graph import WorkflowError
from sdrt.serve.comfy.nodes import NODES
from sdrt.serve.comfy.runner import PromptQueue
from sdrt.serve.middleware import Guard

#: The websocket close code for a connection without the server's credentials.
WS_POLICY_VIOLATION = 1008
#: The ComfyUI model folders /models lists, and what fills each.
MODEL_FOLDERS = ("checkpoints", "loras")


def _comfy_error(message: str, kind: str = "invalid_prompt") -> dict:
    return {"error": {"type": kind, "message": message, "details": "", "extra_info": {}}, "node_errors": {}}


class Clients:
    """The open websockets by client id; messages from the worker thread reach them on the loop."""

    def __init__(self):
        self.queues: dict[str, set[asyncio.Queue]] = {}
        self.loop: asyncio.AbstractEventLoop | None = None

    def send(self, event: str, data: dict | bytes, client_id: str | None) -> None:
        if self.loop is None:
            return
        message = data if isinstance(data, bytes) else {"type": event, "data": data}
        targets = (
            [q for qs in self.queues.values() for q in qs] if client_id is None else self.queues.get(client_id, ())
        )
        for queue in list(targets):
            self.loop.call_soon_threadsafe(queue.put_nowait, message)


def add_comfy_routes(app: FastAPI, service, catalog, settings, folders: dict[str, Path]) -> PromptQueue:
    context = ComfyContext(service, catalog, folders)
    clients = Clients()
    queue = PromptQueue(context, settings.max_queue, clients.send)
    guard = Guard(None, service, settings.api_key, [], settings.api_auth)
    needs_auth = bool(settings.api_key or settings.api_auth)

    @app.post("/prompt")
    async def post_prompt(request: Request):
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse(_comfy_error("Invalid prompt: the body is not JSON"), status_code=400)
        if not isinstance(body, dict) or "prompt" not in body:
            return JSONResponse(_comfy_error("No prompt provided"), status_code=400)
        clients.loop = asyncio.get_running_loop()
        extra = body.get("extra_data") if isinstance(body.get("extra_data"), dict) else {}
        try:
            item = await asyncio.to_thread(
                queue.submit,
                body["prompt"],
                body.get("client_id"),
                str(body["prompt_id"]) if body.get("prompt_id") else None,
                bool(body.get("front")),
                extra,
            )
        except WorkflowError as error:
            return JSONResponse(error.body, status_code=400)
        except OverflowError as error:
            return JSONResponse(_comfy_error(str(error), "queue_full"), status_code=503)
        return {"prompt_id": item.prompt_id, "number": item.number, "node_errors": {}}

    @app.get("/prompt")
    async def get_prompt():
        return {"exec_info": {"queue_remaining": queue.remaining()}}

    @app.get("/queue")
    async def get_queue():
        return queue.state()

    @app.post("/queue")
    async def post_queue(request: Request):
        body = await request.json()
        if body.get("clear"):
            queue.clear()
        if isinstance(body.get("delete"), list):
            queue.delete([str(prompt_id) for prompt_id in body["delete"]])
        return Response(status_code=200)

    @app.get("/history")
    async def history(max_items: int | None = None):
        return queue.history_of(max_items=max_items)

    @app.get("/history/{prompt_id}")
    async def history_of(prompt_id: str):
        return queue.history_of(prompt_id)

    @app.post("/history")
    async def post_history(request: Request):
        body = await request.json()
        if body.get("clear"):
            queue.clear_history()
        if isinstance(body.get("delete"), list):
            queue.clear_history([str(prompt_id) for prompt_id in body["delete"]])
        return Response(status_code=200)

    @app.post("/interrupt")
    async def interrupt():
        queue.interrupt()
        return Response(status_code=200)

    @app.get("/view")
    async def view(filename: str, subfolder: str = "", type: str = "output"):  # noqa: A002 (ComfyUI's name)
        try:
            path = context.path_in(type, filename, subfolder)
        except SdrtError as error:
            return JSONResponse(_comfy_error(str(error)), status_code=400)
        if not path.is_file():
            return Response(status_code=404)
        return FileResponse(path)

    async def upload(request: Request):
        form = await request.form()
        image = form.get("image")
        if not isinstance(image, (UploadFile, StarletteUpload)) or not image.filename:
            return JSONResponse(_comfy_error("image: no file uploaded"), status_code=400)
        kind = str(form.get("type") or "input")
        subfolder = str(form.get("subfolder") or "")
        try:
            path = context.path_in(kind, Path(image.filename).name, subfolder)
        except SdrtError as error:
            return JSONResponse(_comfy_error(str(error)), status_code=400)
        data = await image.read()
        if path.exists() and str(form.get("overwrite", "")).lower() not in ("true", "1"):
            stem, suffix, count = path.stem, path.suffix, 1
            while path.exists():
                path = path.with_name(f"{stem} ({count}){suffix}")
                count += 1
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return {"name": path.name, "subfolder": subfolder, "type": kind}

    app.add_api_route("/upload/image", upload, methods=["POST"])
    app.add_api_route("/upload/mask", upload, methods=["POST"])

    @app.get("/object_info")
    async def object_info():
        return await asyncio.to_thread(lambda: {name: spec.describe(context) for name, spec in NODES.items()})

    @app.get("/object_info/{node_class}")
    async def object_info_of(node_class: str):
        spec = NODES.get(node_class)
        return {} if spec is None else {node_class: await asyncio.to_thread(spec.describe, context)}

    @app.get("/system_stats")
    async def system_stats():
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        free = os.sysconf("SC_AVPHYS_PAGES") * page_size
        return {
            "system": {
                "os": sys.platform,
                "python_version": sys.version,
                "embedded_python": False,
                "comfyui_version": f"sdrt {sdrt.__version__}",  # what ComfyUI reports of itself
                "ram_total": pages * page_size,
                "ram_free": free,
                "argv": ["sdrt", "serve"],
            },
            "devices": [
                {
                    "name": service.pipeline.backend.name,
                    "type": "cpu" if service.pipeline.backend.name == "cpu" else "cuda",
                    "index": 0,
                    "vram_total": 0,
                    "vram_free": 0,
                    "torch_vram_total": 0,
                    "torch_vram_free": 0,
                    "processor": platform.processor(),
                }
            ],
        }

    @app.get("/embeddings")
    async def embeddings():
        names = getattr(service.pipeline, "embedding_names", None)
        return sorted(names()) if callable(names) else []

    @app.get("/models")
    async def model_folders():
        return list(MODEL_FOLDERS)

    @app.get("/models/{folder}")
    async def models_in(folder: str):
        if folder == "checkpoints":
            return context.checkpoint_names()
        if folder == "loras":
            return context.lora_names()
        return JSONResponse(_comfy_error(f"folder: {folder!r} is not one of {', '.join(MODEL_FOLDERS)}"), 404)

    @app.websocket("/ws")
    async def websocket(socket: WebSocket, clientId: str | None = None):  # noqa: N803 (ComfyUI's name)
        if needs_auth and not guard.authorized(socket.scope):
            await socket.close(code=WS_POLICY_VIOLATION)
            return
        await socket.accept()
        clients.loop = asyncio.get_running_loop()
        client_id = clientId or uuid.uuid4().hex
        inbox: asyncio.Queue = asyncio.Queue()
        clients.queues.setdefault(client_id, set()).add(inbox)
        try:
            await socket.send_json(
                {
                    "type": "status",
                    "data": {"status": {"exec_info": {"queue_remaining": queue.remaining()}}, "sid": client_id},
                }
            )
            receiving = asyncio.create_task(socket.receive_text())
            while True:
                getting = asyncio.create_task(inbox.get())
                done, _ = await asyncio.wait({getting, receiving}, return_when=asyncio.FIRST_COMPLETED)
                if receiving in done:
                    getting.cancel()
                    receiving.result()  # raises on disconnect; clients' own messages are ignored
                    receiving = asyncio.create_task(socket.receive_text())
                    continue
                message = getting.result()
                await (socket.send_bytes(message) if isinstance(message, bytes) else socket.send_json(message))
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            clients.queues.get(client_id, set()).discard(inbox)
            if not clients.queues.get(client_id):
                clients.queues.pop(client_id, None)

    return queue
