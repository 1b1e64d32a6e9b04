"""The benchmark's side of a worker process (sdrt.benchmark.worker): start it, send commands,
read its JSON replies, and turn its failure into one BenchError line."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING

from sdrt.errors import SdrtError

if TYPE_CHECKING:
    from sdrt.benchmark import BenchSettings


class BenchError(SdrtError):
    """A benchmark cannot run as asked."""


class Worker:
    """A worker process (see worker.py) driven over its stdin and stdout."""

    def __init__(
        self,
        kind: str,
        model: str,
        settings: BenchSettings,
        backend: str,
        threads: int | None,
        load_options: dict | None = None,
        label: str | None = None,
    ):
        self.kind = label or kind  # the name its results go under (one sdrt worker per engine)
        command = [
            sys.executable,
            "-m",
            "sdrt.benchmark.worker",
            kind,
            model,
            json.dumps(asdict(settings)),
            backend,
            str(threads or 0),
            json.dumps(load_options or {}),
        ]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        ready = self._read()
        self.load_seconds = ready["load_seconds"]

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            self._failed()
        reply = json.loads(line)
        if "error" in reply:  # the worker's own one-line error (worker.py)
            raise BenchError(f"the {self.kind} benchmark worker failed: {reply['error']}")
        return reply

    def _failed(self):
        error = self.process.stderr.read().strip().splitlines()
        reason = error[-1] if error else f"exit code {self.process.wait()}"
        raise BenchError(f"the {self.kind} benchmark worker failed: {reason}")

    def _send(self, command: str) -> None:
        try:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:  # it exited: say why
            self._failed()

    def run(self) -> dict:
        self._send("run")
        return self._read()

    def close(self) -> dict:
        """Peak host memory (peak_rss_bytes) and, on GPU backends, GPU memory (peak_gpu_bytes)."""
        self._send("quit")
        peaks = self._read()
        self.process.wait()
        return peaks
