"""Step caches for the transformer families (opt-in, `--cache NAME:SETTINGS`): a model call skips
most of the transformer when its output is predicted to change little. CACHES is the one registry
of their names. They run on the transformer exported in parts (`sdrt export --cache-graphs`,
sdrt.export.flux_cache: head = embeddings + first block, body = the other blocks, tail =
norm_out/proj_out), FLUX.1 only for now.

FirstBlockCache is diffusers 0.42's hook (diffusers.hooks.first_block_cache, `FirstBlockCacheConfig`):

- every call runs the head; the first block's image-stream residual (its output less its
  input) is compared with the one of the last call that ran in full: relative L1,
  mean|r - r_last| / mean|r_last|, over the call's rows of one guidance branch;
- above the threshold (and on a branch's first call) the body runs, and the call keeps its
  residual and the body's change to the image stream (last block's output less the first's);
- at or below it the body is skipped: the tail runs on the first block's output plus the kept change;
- the hook keeps one state per cache context, and FluxPipeline calls its transformer in the
  "cond" context and, with true CFG, the "uncond" one: here one state per guidance branch (the
  batch's halves: [negative; positive]) and per call of a step (sdrt.runtime.loop.conditioning).
  A call whose branches disagree runs the body on the whole batch and uses it for the branches
  that run in full (the others' rows take the cached change, as diffusers' separate calls do).

The relative L1 is summed in float64 (diffusers in the model's dtype, float32 here: the
difference is far below any threshold's resolution but could flip a decision within ~1e-7 of it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sdrt.runtime.engines import Engine
from sdrt.runtime.loop.context import StepContext
from sdrt.runtime.manifest import (
    BODY_HIDDEN,
    CACHE_GRAPHS,
    DENOISER_OUTPUT,
    FIRST_RESIDUAL,
    HEAD_HIDDEN,
    TEMB,
    Manifest,
)

#: The guidance branches of a batch, in the rows' order (sdrt.runtime.loop.guiders: [negative; positive]),
#: named as FluxPipeline's cache contexts.
BRANCHES = {1: ("cond",), 2: ("uncond", "cond")}
#: FirstBlockCacheConfig's default threshold.
DEFAULT_THRESHOLD = 0.05


@dataclass(frozen=True)
class FirstBlockCache:
    threshold: float = DEFAULT_THRESHOLD
    name = "first-block"

    @classmethod
    def parse(cls, settings: str) -> FirstBlockCache:
        """ "THRESHOLD" (a number >= 0; empty: diffusers' default)."""
        if not settings:
            return cls()
        try:
            threshold = float(settings)
        except ValueError:
            raise ValueError(f"first-block takes a threshold number (first-block:0.05), got {settings!r}") from None
        made = cls(threshold)
        problem = made.problem()
        if problem:
            raise ValueError(problem)
        return made

    def problem(self) -> str | None:
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not np.isfinite(t) or t < 0:
            return f"the first-block cache threshold must be a finite number >= 0, got {t!r}"
        return None

    @property
    def text(self) -> str:
        return f"{self.name}:{self.threshold:g}"


#: Every step cache, by the name `--cache NAME:SETTINGS` gives.
CACHES = {FirstBlockCache.name: FirstBlockCache}
StepCache = FirstBlockCache


def parse_cache(text: str) -> StepCache:
    """ "NAME[:SETTINGS]" as its cache (ValueError with what is wrong)."""
    name, _, settings = str(text).strip().partition(":")
    if name not in CACHES:
        raise ValueError(f"unknown step cache {name!r}: choose from {', '.join(CACHES)} (NAME:SETTINGS)")
    return CACHES[name].parse(settings.strip())


def cache_problem(cache: StepCache, manifest: Manifest) -> str | None:
    """Why this export cannot run `cache` (its settings are checked when made)."""
    if not isinstance(cache, tuple(CACHES.values())):
        return f"cache must be one of {', '.join(CACHES)} (NAME:SETTINGS), got {cache!r}"
    problem = cache.problem()
    if problem is None and any(name not in manifest.components for name in CACHE_GRAPHS):
        return f"this export has no step-cache graphs: re-export it with `sdrt export --cache-graphs` ({cache.name})"
    return problem


@dataclass
class _Branch:
    """One branch's state (diffusers' FBCSharedBlockState): the first block's residual and the
    body's change of the image stream, both from the last call that ran in full."""

    residual: np.ndarray | None = None
    change: np.ndarray | None = None

    def runs_in_full(self, residual: np.ndarray, threshold: float) -> bool:
        if self.residual is None:
            return True
        moved = np.abs(residual - self.residual).mean(dtype=np.float64)
        return bool(moved / np.abs(self.residual).mean(dtype=np.float64) > threshold)


def _feeds(engine: Engine, given: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The engine's inputs from `given`, each in the dtype it takes."""
    return {name: np.asarray(given[name]).astype(engine.input_dtype(name), copy=False) for name in engine.inputs}


@dataclass
class FirstBlockCacheRun:
    """One generation's first-block cache on the three parts; `full_calls` records, per model
    call, its step and whether each branch ran in full."""

    head: Engine
    body: Engine
    tail: Engine
    threshold: float
    branches: tuple[str, ...]
    states: dict[tuple[int, int], _Branch] = field(default_factory=dict)
    full_calls: list[tuple[int, tuple[bool, ...]]] = field(default_factory=list)

    def run(self, ctx: StepContext, position: int, feeds: dict[str, np.ndarray]) -> np.ndarray:
        head = self.head.run(_feeds(self.head, feeds))
        hidden, residual = head[HEAD_HIDDEN], head[FIRST_RESIDUAL]
        groups = np.array_split(np.arange(len(hidden)), len(self.branches))
        states = [self.states.setdefault((position, branch), _Branch()) for branch in range(len(groups))]
        full = tuple(state.runs_in_full(residual[rows], self.threshold) for state, rows in zip(states, groups))
        body = self.body.run(_feeds(self.body, {**feeds, **head}))[BODY_HIDDEN] if any(full) else None
        stream = np.empty_like(hidden)
        for state, rows, runs in zip(states, groups, full):
            if runs:
                state.residual, state.change = residual[rows], body[rows] - hidden[rows]
                stream[rows] = body[rows]
            else:
                stream[rows] = hidden[rows] + state.change
        self.full_calls.append((ctx.position, full))
        return self.tail.run(_feeds(self.tail, {BODY_HIDDEN: stream, TEMB: head[TEMB]}))[DENOISER_OUTPUT]

    def full_steps(self) -> dict[str, list[int]]:
        """Branch name -> the steps (from the stage's first, one entry per model call) that ran in full."""
        return {
            name: [step for step, full in self.full_calls if full[index]] for index, name in enumerate(self.branches)
        }


def cache_run(cache: StepCache, engine_of, unconditional: bool) -> FirstBlockCacheRun:
    """The run of `cache` for one generation; `engine_of(name)` loads a part (on first use)."""
    head, body, tail = (engine_of(name) for name in CACHE_GRAPHS)
    return FirstBlockCacheRun(head, body, tail, float(cache.threshold), BRANCHES[2 if unconditional else 1])
