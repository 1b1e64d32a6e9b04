"""Ctrl-C and SIGTERM during a generation: it stops at its next step with one line."""

from __future__ import annotations

import contextlib
import signal
import threading

from sdrt.errors import SdrtError

#: The shell's exit status for a process stopped by SIGINT (128 + 2).
SIGNAL_EXIT_CODE = 130


class Stopped(SdrtError):
    exit_code = SIGNAL_EXIT_CODE


@contextlib.contextmanager
def stop_on_signals():
    """A cancel token that SIGINT and SIGTERM set; a second Ctrl-C interrupts at once. The
    previous handlers come back afterwards."""
    from sdrt.runtime.loop.context import GenerationCancelled

    stop = threading.Event()
    previous = {}
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield stop
        return

    def handle(signum, frame):
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, handle)
    try:
        yield stop
    except GenerationCancelled:
        raise Stopped("stopped by a signal at a step boundary; no image was written") from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
