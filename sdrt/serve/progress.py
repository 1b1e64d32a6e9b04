"""What A1111's `GET /sdapi/v1/progress` reports: the running generation's step, the fraction of
it done, an ETA from the rate so far, how many requests are admitted, and with `--preview-every N`
the latest preview (sdrt.runtime.features.preview: the tiny VAE's decode when the export has one) as a
base64 PNG in `current_image`. With several generations running at once it follows the one that
moved last."""

from __future__ import annotations

import threading
import time
from datetime import datetime

from PIL import Image

PNG_FORMAT = "PNG"


class Progress:
    def __init__(self):
        self._lock = threading.Lock()
        self.step = 0
        self.total = 0
        self.started: float | None = None
        self.job_timestamp = "0"
        self.image: Image.Image | None = None
        self.image_step = 0
        self.flags = {"interrupted": False, "skipped": False}

    def begin(self) -> None:
        with self._lock:
            self.step, self.total, self.image, self.image_step = 0, 0, None, 0
            self.flags = {"interrupted": False, "skipped": False}
            self.started = time.monotonic()
            self.job_timestamp = datetime.now().strftime("%Y%m%d%H%M%S")

    def on_step(self, step: int, total: int) -> None:
        with self._lock:
            self.step, self.total = step, total

    def on_preview(self, step: int, total: int, images: list[Image.Image]) -> None:
        with self._lock:
            self.image, self.image_step = images[0], step

    def stopped(self, kind: str) -> None:
        """A1111's state flags: the running job was interrupted or skipped."""
        with self._lock:
            self.flags = {**self.flags, ("interrupted" if kind == "interrupt" else "skipped"): True}

    def end(self) -> None:
        with self._lock:
            self.step, self.total, self.started, self.image = 0, 0, None, None

    def report(self, admitted: int, skip_current_image: bool, encode) -> dict:
        """A1111's response; `encode` makes a base64 PNG of an image."""
        with self._lock:
            step, total, started, image = self.step, self.total, self.started, self.image
            timestamp, flags = self.job_timestamp, dict(self.flags)
        fraction = step / total if total else 0.0
        elapsed = time.monotonic() - started if started is not None else 0.0
        eta = elapsed / fraction - elapsed if fraction > 0 else None
        return {
            "progress": fraction,
            "eta_relative": eta if eta is not None else 0.0,
            "state": {
                **flags,
                "job": "txt2img" if started is not None else "",
                "job_count": admitted,
                "job_timestamp": timestamp,
                "job_no": 0,
                "sampling_step": step,
                "sampling_steps": total,
            },
            "current_image": None if image is None or skip_current_image else encode(image),
            "textinfo": None,
            "current_task": None,
        }
