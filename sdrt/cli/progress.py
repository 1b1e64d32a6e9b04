"""`sdrt generate`'s step progress on stderr: on a terminal a bar redrawn in place with the rate
and an ETA; into a pipe or a log, a plain line every tenth of the run (no carriage returns)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable

import click

#: Lines a run writes when stderr is not a terminal (besides the first step's and the last's).
PLAIN_LINES = 10
BAR_WIDTH = 30


def format_duration(seconds: float) -> str:
    """M:SS, or H:MM:SS from an hour on (as tqdm shows an ETA); "?" when it is not known."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class StepProgress:
    """Called with (step, total) after each step. The rate is timed from the end of the first
    step, so load and warm-up do not count; the ETA is the steps left at that rate."""

    def __init__(
        self,
        enabled: bool,
        terminal: bool | None = None,
        write: Callable[[str, bool], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.enabled = enabled
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self.write = write or (lambda text, newline: click.echo(text, err=True, nl=newline))
        self.clock = clock
        self.first_step_done: float | None = None

    def __call__(self, step: int, total: int) -> None:
        if not self.enabled:
            return
        now = self.clock()
        if self.first_step_done is None or step == 1:  # a second stage (the refiner) starts again
            self.first_step_done = now
        elapsed = now - self.first_step_done
        rate = (step - 1) / elapsed if elapsed > 0 else 0.0
        speed = f", {rate:.2f} it/s, ETA {format_duration((total - step) / rate)}" if rate > 0 else ""
        if self.terminal:
            done = "#" * (step * BAR_WIDTH // total)
            self.write(f"\r[{done:<{BAR_WIDTH}}] {step}/{total} steps{speed}", step == total)
        elif step in (1, total) or step % max(1, math.ceil(total / PLAIN_LINES)) == 0:
            self.write(f"step {step}/{total}{speed}", True)


class ComponentLines:
    """`sdrt export`'s progress: the exporter's lines about one component ("unet: exporting ...",
    "unet: max abs error ...", "unet: LoRA map ...") joined into one line per component. On a terminal
    the line grows in place as its parts come; into a pipe or a log it is written once, whole."""

    SEPARATOR = "; "

    def __init__(self, terminal: bool | None = None, write: Callable[[str, bool], None] | None = None):
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self.write = write or (lambda text, newline: click.echo(text, err=True, nl=newline))
        self.subject: str | None = None
        self.parts: list[str] = []

    def __call__(self, line: str) -> None:
        subject, colon, rest = line.partition(": ")
        if colon and " " not in subject and subject == self.subject:
            self.parts.append(rest)
            if self.terminal:
                self.write(self.SEPARATOR + rest, False)
            return
        self.flush()
        if colon and " " not in subject:
            self.subject, self.parts = subject, [rest]
            if self.terminal:
                self.write(line, False)
            return
        self.write(line, True)

    def flush(self) -> None:
        """End the component's line (call once more when the export ends)."""
        if self.subject is not None:
            self.write("" if self.terminal else f"{self.subject}: {self.SEPARATOR.join(self.parts)}", True)
        self.subject, self.parts = None, []
