"""ComfyUI's prompt queue: prompts validated when queued, run one at a time by a worker thread
(nodes in dependency order, each node's outputs reused while its inputs are unchanged, as
ComfyUI caches them), their history kept, and ComfyUI's messages sent as a run goes."""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from sdrt.runtime.loop.context import GenerationCancelled
from sdrt.serve.comfy.graph import is_link, order, validate
from sdrt.serve.comfy.nodes import NODES
from sdrt.serve.comfy.previews import preview_for

#: Finished prompts kept for /history (ComfyUI keeps 10,000; these hold image names, not images).
MAX_HISTORY = 1000
#: Node results kept for reuse across prompts (each may hold latents or images).
MAX_CACHED = 64


@dataclass
class QueuedPrompt:
    number: int
    prompt_id: str
    prompt: dict
    extra: dict
    outputs: list[str]
    client_id: str | None = None
    messages: list = field(default_factory=list)

    def entry(self) -> list:
        """ComfyUI's queue and history item: [number, prompt_id, prompt, extra_data, outputs]."""
        return [self.number, self.prompt_id, self.prompt, self.extra, self.outputs]


def _milliseconds() -> int:
    return int(time.time() * 1000)


class PromptQueue:
    """`send(event, data, client_id)` delivers a message (client_id None: to every client); bytes
    `data` is a binary frame (a preview)."""

    def __init__(self, context, max_queue: int, send: Callable[[str, dict, str | None], None]):
        self.context, self.max_queue, self.send = context, max_queue, send
        self.lock = threading.Condition()
        self.pending: deque[QueuedPrompt] = deque()
        self.running: QueuedPrompt | None = None
        self.history: OrderedDict[str, dict] = OrderedDict()
        self.cache: OrderedDict[str, tuple] = OrderedDict()
        self.numbers = itertools.count()
        self.cancel = threading.Event()
        self.worker: threading.Thread | None = None

    # ------------------------------------------------------------------ queue
    def submit(self, prompt: dict, client_id: str | None, prompt_id: str | None, front: bool, extra: dict):
        outputs = validate(prompt, self.context)  # WorkflowError: ComfyUI's 400 body
        with self.lock:
            if len(self.pending) + (self.running is not None) >= self.max_queue:
                raise OverflowError(f"the queue is full ({self.max_queue} prompts); retry later")
            number = -next(self.numbers) if front else next(self.numbers)
            item = QueuedPrompt(number, prompt_id or str(uuid.uuid4()), prompt, extra, outputs, client_id)
            (self.pending.appendleft if front else self.pending.append)(item)
            self.lock.notify_all()
            if self.worker is None:
                self.worker = threading.Thread(target=self._work, name="comfy-queue", daemon=True)
                self.worker.start()
        self._status()
        return item

    def remaining(self) -> int:
        with self.lock:
            return len(self.pending) + (self.running is not None)

    def state(self) -> dict:
        with self.lock:
            running = [self.running.entry()] if self.running is not None else []
            return {"queue_running": running, "queue_pending": [item.entry() for item in self.pending]}

    def delete(self, prompt_ids: list[str]) -> None:
        with self.lock:
            self.pending = deque(item for item in self.pending if item.prompt_id not in prompt_ids)
        self._status()

    def clear(self) -> None:
        with self.lock:
            self.pending.clear()
        self._status()

    def interrupt(self) -> None:
        """Stops the running prompt at its next step (ComfyUI's /interrupt)."""
        if self.running is not None:
            self.cancel.set()

    def history_of(self, prompt_id: str | None = None, max_items: int | None = None) -> dict:
        with self.lock:
            if prompt_id is not None:
                return {prompt_id: self.history[prompt_id]} if prompt_id in self.history else {}
            items = list(self.history.items())
        return dict(items[-max_items:] if max_items else items)

    def clear_history(self, prompt_ids: list[str] | None = None) -> None:
        with self.lock:
            for prompt_id in list(self.history) if prompt_ids is None else prompt_ids:
                self.history.pop(prompt_id, None)

    def _status(self) -> None:
        self.send("status", {"status": {"exec_info": {"queue_remaining": self.remaining()}}}, None)

    # ------------------------------------------------------------------ running
    def _work(self) -> None:
        while True:
            with self.lock:
                while not self.pending:
                    self.lock.wait()
                item = min(self.pending, key=lambda queued: queued.number)
                self.pending.remove(item)
                self.running = item
                self.cancel.clear()
            outputs, status = {}, "success"
            try:
                outputs = self._run(item)
            except Exception:  # reported to the client as execution_error / interrupted by _run
                status = "error"
            with self.lock:
                self.running = None
                self.history[item.prompt_id] = {
                    "prompt": item.entry(),
                    "outputs": outputs,
                    "status": {"status_str": status, "completed": status == "success", "messages": item.messages},
                    "meta": {node: {"node_id": node, "display_node": node} for node in outputs},
                }
                while len(self.history) > MAX_HISTORY:
                    self.history.popitem(last=False)
            self._status()

    def _message(self, item: QueuedPrompt, event: str, data: dict) -> None:
        data = {**data, "prompt_id": item.prompt_id}
        if event in ("execution_start", "execution_cached", "execution_success", "execution_error"):
            item.messages.append([event, {**data, "timestamp": _milliseconds()}])
        self.send(event, data, item.client_id)

    def _signature(self, prompt: dict, node_id: str, memo: dict) -> str:
        """A node's class and inputs, links replaced by their sources' signatures."""
        if node_id not in memo:
            inputs = {}
            for name, value in sorted(prompt[node_id].get("inputs", {}).items()):
                inputs[name] = (
                    ["link", self._signature(prompt, str(value[0]), memo), value[1]] if is_link(value) else value
                )
            memo[node_id] = json.dumps([prompt[node_id]["class_type"], inputs], sort_keys=True, default=str)
        return memo[node_id]

    def _run(self, item: QueuedPrompt) -> dict:
        prompt, memo = item.prompt, {}
        nodes = order(prompt, item.outputs)
        signatures = {node_id: self._signature(prompt, node_id, memo) for node_id in nodes}
        self._message(item, "execution_start", {})
        self.context.preview = preview_for(
            item.extra, self.context.service.settings.preview_every, lambda frame: self.send("", frame, item.client_id)
        )
        cached = [node_id for node_id in nodes if signatures[node_id] in self.cache]
        self._message(item, "execution_cached", {"nodes": cached})
        results: dict[str, tuple] = {}
        ui_outputs: dict[str, dict] = {}
        executed: list[str] = []
        for node_id in nodes:
            entry = prompt[node_id]
            spec = NODES[entry["class_type"]]
            if signatures[node_id] in self.cache:
                self.cache.move_to_end(signatures[node_id])
                results[node_id], ui = self.cache[signatures[node_id]]
            else:
                self._message(item, "executing", {"node": node_id, "display_node": node_id})
                inputs = {
                    name: results[str(value[0])][value[1]] if is_link(value) else value
                    for name, value in entry.get("inputs", {}).items()
                    if name in spec.required or name in spec.optional
                }
                self.context.progress = lambda step, total, node=node_id: self._message(
                    item, "progress", {"value": step, "max": total, "node": node}
                )
                self.context.cancel = self.cancel
                try:
                    answer = spec.run(self.context, **inputs)
                except GenerationCancelled:
                    self._message(
                        item,
                        "execution_interrupted",
                        {"node_id": node_id, "node_type": spec.name, "executed": executed},
                    )
                    raise
                except Exception as error:
                    self._message(
                        item,
                        "execution_error",
                        {
                            "node_id": node_id,
                            "node_type": spec.name,
                            "executed": executed,
                            "exception_message": str(error),
                            "exception_type": type(error).__name__,
                            "traceback": [],
                            "current_inputs": {},
                            "current_outputs": {},
                        },
                    )
                    raise
                ui = None
                if spec.output_node:
                    answer, ui = answer
                results[node_id] = answer
                self.cache[signatures[node_id]] = (answer, ui)
                while len(self.cache) > MAX_CACHED:
                    self.cache.popitem(last=False)
                executed.append(node_id)
            if ui is not None:
                ui_outputs[node_id] = ui
                self._message(item, "executed", {"node": node_id, "display_node": node_id, "output": ui})
        self._message(item, "executing", {"node": None})
        self._message(item, "execution_success", {})
        return ui_outputs
