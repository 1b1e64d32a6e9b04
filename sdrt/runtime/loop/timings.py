"""Seconds per stage of one generation: a typed recorder instead of a dict of string keys.

Every measure is declared once in MEASURES (its name and what it counts); recording an
undeclared one is a programming error. `with timings.stage(TEXT_ENCODER):` adds a block's
time to a total, `timings.call(UNET_STEPS, seconds)` appends one call to a list. A Timings is
a read-only mapping (name -> seconds, or a list of seconds), which is what GenerationResult
carries and the CLI, servers and benchmarks read.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

TEXT_ENCODER = "text_encoder"
TOKENIZE = "tokenize"
VAE_ENCODER = "vae_encoder"
DENOISE = "denoise"
UNET_STEPS = "unet_steps"
CONTROLNET_STEPS = "controlnet_steps"
REFERENCE_TOKENS = "reference_tokens"  # FLUX.1 Kontext (sdrt.runtime.families.flux_kontext)
REFERENCE_FEEDS = "reference_feeds"
UNET_HOST_COPIES = "unet_host_copies"
PREVIEWS = "previews"
SCHEDULER_AND_GUIDANCE = "scheduler_and_guidance"
VAE_DECODER = "vae_decoder"
TOTAL = "total"
#: A two-pass run (hires fix) also reports its first pass's totals under this prefix.
FIRST_PASS = "first_pass_"

#: Every measure: name -> what it counts. Lists (one entry per call) are named in CALL_MEASURES.
MEASURES = {
    TEXT_ENCODER: "encoding the prompts, tokenizing included",
    TOKENIZE: "tokenizing and chunking the prompts",
    VAE_ENCODER: "encoding the init image (image-to-image, inpainting)",
    DENOISE: "the whole denoising loop",
    UNET_STEPS: "each denoiser call of the loop, without the ControlNets",
    CONTROLNET_STEPS: "each step's ControlNet residuals",
    REFERENCE_TOKENS: "each call's reference-image tokens (FLUX.1 Kontext)",
    REFERENCE_FEEDS: "each denoiser call's FLUX.2 reference-image tokens (encoded once, before the loop)",
    UNET_HOST_COPIES: "host-device copies inside the denoiser calls (device engines)",
    PREVIEWS: "decoding previews during the loop",
    SCHEDULER_AND_GUIDANCE: "the loop's time outside the models: sampler, guidance, copies and casts",
    VAE_DECODER: "decoding the final latents",
    TOTAL: "the whole request",
}
CALL_MEASURES = frozenset({UNET_STEPS, CONTROLNET_STEPS, REFERENCE_TOKENS, REFERENCE_FEEDS})


class Timings(Mapping):
    """The measures recorded so far (see the module's note)."""

    def __init__(self, values: Mapping[str, float | list[float]] | None = None):
        self._values: dict[str, float | list[float]] = dict(values or {})

    @staticmethod
    def _declared(name: str) -> str:
        base = name[len(FIRST_PASS) :] if name.startswith(FIRST_PASS) else name
        if base not in MEASURES:
            raise KeyError(f"{name!r} is not a declared measure (sdrt.runtime.loop.timings.MEASURES)")
        return name

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Adds the block's seconds to `name`'s total."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - began)

    def add(self, name: str, seconds: float) -> None:
        value = self._values.get(self._declared(name), 0.0)
        if isinstance(value, list):
            raise KeyError(f"{name!r} is a per-call measure: record it with call()")
        self._values[name] = value + seconds

    def set(self, name: str, seconds: float) -> None:
        self._values[self._declared(name)] = seconds

    def calls(self, name: str) -> list[float]:
        """The list of a per-call measure (created empty on first use)."""
        if name not in CALL_MEASURES:
            raise KeyError(f"{name!r} is not a per-call measure")
        return self._values.setdefault(name, [])  # type: ignore[return-value]

    def call(self, name: str, seconds: float) -> None:
        self.calls(name).append(seconds)

    def total(self, name: str) -> float:
        """A measure's seconds (a list's sum; 0 when not recorded)."""
        value = self._values.get(name, 0.0)
        return float(sum(value)) if isinstance(value, list) else float(value)

    def plus(self, other: Timings) -> Timings:
        """Both runs' time per measure (lists of calls joined): several runs reported as one."""
        summed: dict[str, float | list[float]] = {}
        for key in self.keys() | other.keys():
            a, b = self.get(key), other.get(key)
            if isinstance(a, list) or isinstance(b, list):
                summed[key] = list(a or ()) + list(b or ())
            else:
                summed[key] = (a or 0.0) + (b or 0.0)
        return Timings(summed)

    def merged(self, second: Timings) -> Timings:
        """Two passes' time (`plus`), with this pass's totals also under FIRST_PASS (the hires fix)."""
        first = {FIRST_PASS + key: value for key, value in self.items() if not isinstance(value, list)}
        return Timings({**first, **self.plus(second)})

    def __getitem__(self, name: str) -> float | list[float]:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Timings({self._values!r})"
