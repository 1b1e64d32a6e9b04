"""Ctrl-C and SIGTERM: during a generation it stops at its next step; at any other moment (imports,
model load, an export) the command stops at once. Either way: one line, exit 130, no image."""

from __future__ import annotations

import contextlib
import signal
import threading

from sdrt.errors import SdrtError

#: The shell's exit status for a process stopped by SIGINT (128 + 2).
SIGNAL_EXIT_CODE = 130


class Stopped(SdrtError):
    exit_code = SIGNAL_EXIT_CODE


class Interrupted(BaseException):
    """Raised by the handler `exit_on_signals` installs. Not a KeyboardInterrupt, which click
    reports as "Aborted!" with exit 1, and not an Exception, which libraries' broad handlers
    would turn into some other error."""


#: Set once a signal has reached this process: an error raised after it is the signal's doing
#: (onnxruntime, interrupted in a session's creation, reports "initialization failed").
received = threading.Event()


def _interrupt(signum, frame):
    received.set()
    raise Interrupted


@contextlib.contextmanager
def exit_on_signals():
    """For a whole command: SIGINT and SIGTERM raise Interrupted, which the CLI reports in one
    line with exit 130. The previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received.clear()
    previous = {
        signum: signal.signal(signum, _interrupt)
        for signum in (signal.SIGINT, signal.SIGTERM)
        if signal.getsignal(signum) is not signal.SIG_IGN  # as nohup and `cmd &` in a script leave it
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


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
        received.set()
        if stop.is_set() and signum == signal.SIGINT:
            raise Interrupted
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
