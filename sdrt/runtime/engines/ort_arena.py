"""One ONNX Runtime memory arena for all of a process's CPU sessions.

By default each CPU session grows its own arena to its own peak and keeps it: a pipeline's
arenas add up (the denoiser's activations, then the VAE decoder's, each kept). Registered once
in ONNX Runtime's environment and used by every CPU session (`session.use_env_allocators`), one
arena serves them all, so the pipeline's activation memory is that of its largest call, not the
sum. It grows by what is asked (kSameAsRequested) rather than by powers of two. Measured on the
SD3.5 Medium architecture at 512x512 (fp32, benchmarks/session_memory.py,
docs/benchmarks/cpu-sd35-medium-512-session-memory.json): peak 14.73 -> 13.22 GiB after the
transformer and the VAE decoder ran, the transformer call within the machine's noise.
`SDRT_ORT_SHARED_ARENA=0` goes back to one arena per session.
"""

from __future__ import annotations

import os
import threading

SWITCH_ENV = "SDRT_ORT_SHARED_ARENA"  # "0": each session its own arena (ONNX Runtime's default)
USE_ENV_ALLOCATORS = "session.use_env_allocators"
#: OrtArenaCfg arguments: no limit (0), arena_extend_strategy 1 = kSameAsRequested (0 is
#: kNextPowerOfTwo), and ONNX Runtime's defaults (-1) for the initial chunk and dead bytes.
NO_LIMIT, SAME_AS_REQUESTED, ORT_DEFAULT = 0, 1, -1

_lock = threading.Lock()
_registered = False


def enabled() -> bool:
    return os.environ.get(SWITCH_ENV, "1") != "0"


def share(options) -> None:
    """Make a CPU session's SessionOptions use the process's shared arena (registered on first use)."""
    global _registered
    if not enabled():
        return
    import onnxruntime as ort

    with _lock:
        if not _registered:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            arena = ort.OrtArenaCfg(NO_LIMIT, SAME_AS_REQUESTED, ORT_DEFAULT, ORT_DEFAULT)
            ort.create_and_register_allocator(info, arena)
            _registered = True
    options.add_session_config_entry(USE_ENV_ALLOCATORS, "1")
