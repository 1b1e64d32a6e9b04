"""One generation's step cache (the settings: sdrt.runtime.features.step_caches): what each model
call of the denoiser runs, and the record of which calls ran the transformer in full.

FirstBlockCacheRun is diffusers 0.42's FirstBlockCache hook (diffusers.hooks.first_block_cache)
on the transformer's three parts (sdrt.export.flux_cache):

- every call runs the head; the first block's image-stream residual (its output less its
  input) is compared with the one of the last call that ran in full: relative L1,
  mean|r - r_last| / mean|r_last|, over the call's rows of one guidance branch;
- above the threshold (and on a branch's first call) the body runs, and the call keeps its
  residual and the body's change to the image stream (the last block's output less the first's);
- at or below it the body is skipped: the tail runs on the first block's output plus the kept change;
- the hook keeps one state per cache context, and FluxPipeline calls its transformer in the
  "cond" context and, with true CFG, the "uncond" one: here one state per guidance branch (the
  batch's halves, [negative; positive]) and per call of a step (sdrt.runtime.loop.conditioning).
  A call whose branches disagree runs the body on the whole batch and uses it for the branches
  that run in full (the others' rows take the kept change, as diffusers' separate calls do).
  The relative L1 is summed in float64 (diffusers: in the model's dtype, float32 here).

TaylorSeerRun is diffusers' TaylorSeer hook in its lite mode (diffusers.hooks.taylorseer_cache,
`use_lite_mode=True`): the blocks are skipped (they return zeros) and `proj_out`'s output is
predicted, so on a predicted call nothing of the transformer runs and the output is the Taylor
series of the model's output (a permutation of proj_out's: FLUX's is proj_out's own). Its factors
are the divided differences of the outputs of the calls that ran, each kept in the factors'
dtype (bfloat16 by default, rounded as torch rounds: to nearest, ties to even).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from sdrt.runtime.engines import Engine
from sdrt.runtime.loop.context import StepContext
from sdrt.runtime.manifest import BODY_HIDDEN, DENOISER_OUTPUT, FIRST_RESIDUAL, HEAD_HIDDEN, TEMB

#: bfloat16 is float32's upper 16 bits; rounding adds half of the dropped part (less one: ties to even).
BF16_DROPPED_BITS, BF16_HALF = 16, 0x7FFF
BF16_KEPT = np.uint32(0xFFFF0000)


def to_bfloat16(values: np.ndarray) -> np.ndarray:
    """float32 values rounded to bfloat16 (as torch's .to(torch.bfloat16)), kept as float32."""
    values = np.asarray(values, np.float32)
    bits = values.view(np.uint32)
    odd = (bits >> np.uint32(BF16_DROPPED_BITS)) & np.uint32(1)
    with np.errstate(over="ignore"):
        rounded = ((bits + np.uint32(BF16_HALF) + odd) & BF16_KEPT).view(np.float32)
    return np.where(np.isnan(values), values, rounded)


#: The factors' dtypes TaylorSeerCacheConfig takes, by name: how a factor is kept.
FACTOR_DTYPES = {
    "bf16": to_bfloat16,
    "fp16": lambda values: np.asarray(values).astype(np.float16).astype(np.float32),
    "fp32": lambda values: np.asarray(values, np.float32),
}


@dataclass
class CacheRecord:
    """Per model call: its step (from the stage's first) and whether each guidance branch ran in full."""

    branches: tuple[str, ...]
    calls: list[tuple[int, tuple[bool, ...]]] = field(default_factory=list)

    def full_steps(self) -> dict[str, list[int]]:
        """Branch name -> the steps whose call ran in full (one entry per model call)."""
        return {name: [step for step, full in self.calls if full[index]] for index, name in enumerate(self.branches)}


def _feeds(engine: Engine, given: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The engine's inputs from `given`, each in the dtype it takes."""
    return {name: np.asarray(given[name]).astype(engine.input_dtype(name), copy=False) for name in engine.inputs}


@dataclass
class _Branch:
    """One branch's FirstBlockCache state (diffusers' FBCSharedBlockState): the first block's
    residual and the body's change of the image stream, both from the last call that ran in full."""

    residual: np.ndarray | None = None
    change: np.ndarray | None = None

    def runs_in_full(self, residual: np.ndarray, threshold: float) -> bool:
        if self.residual is None:
            return True
        moved = np.abs(residual - self.residual).mean(dtype=np.float64)
        return bool(moved / np.abs(self.residual).mean(dtype=np.float64) > threshold)


@dataclass
class FirstBlockCacheRun:
    head: Engine
    body: Engine
    tail: Engine
    threshold: float
    record: CacheRecord
    states: dict[tuple[int, int], _Branch] = field(default_factory=dict)

    def run(self, ctx: StepContext, position: int, feeds: dict[str, np.ndarray]) -> np.ndarray:
        head = self.head.run(_feeds(self.head, feeds))
        hidden, residual = head[HEAD_HIDDEN], head[FIRST_RESIDUAL]
        groups = np.array_split(np.arange(len(hidden)), len(self.record.branches))
        states = [self.states.setdefault((position, branch), _Branch()) for branch in range(len(groups))]
        full = tuple(state.runs_in_full(residual[rows], self.threshold) for state, rows in zip(states, groups))
        body = self.body.run(_feeds(self.body, {**feeds, **head}))[BODY_HIDDEN] if any(full) else hidden
        stream = np.empty_like(hidden)
        for state, rows, runs in zip(states, groups, full):
            if runs:
                state.residual, state.change = residual[rows], body[rows] - hidden[rows]
                stream[rows] = body[rows]
            else:
                stream[rows] = hidden[rows] + state.change
        self.record.calls.append((ctx.position, full))
        return self.tail.run(_feeds(self.tail, {BODY_HIDDEN: stream, TEMB: head[TEMB]}))[DENOISER_OUTPUT]


@dataclass
class _Taylor:
    """One call position's TaylorSeer state (diffusers' TaylorSeerState of proj_out)."""

    step: int = -1
    last_update: int | None = None
    factors: list[np.ndarray] = field(default_factory=list)
    dtype: np.dtype = np.dtype(np.float32)


@dataclass
class TaylorSeerRun:
    engine: Engine
    output: str
    cache: object  # sdrt.runtime.features.step_caches.TaylorSeer
    record: CacheRecord
    states: dict[int, _Taylor] = field(default_factory=dict)

    def run(self, ctx: StepContext, position: int, feeds: dict[str, np.ndarray]) -> np.ndarray:
        state = self.states.setdefault(position, _Taylor())
        state.step += 1
        computes = self.cache.computes(state.step)  # type: ignore[attr-defined]
        self.record.calls.append((ctx.position, (computes,) * len(self.record.branches)))
        if computes:
            output = self.engine.run(feeds)[self.output]
            self._update(state, output)
            return output
        assert state.last_update is not None  # the warm-up's first call always computes
        offset = state.step - state.last_update
        predicted = np.zeros(state.factors[0].shape, state.dtype)
        for order, factor in enumerate(state.factors):
            predicted = predicted + factor.astype(state.dtype) * np.float32(offset**order / math.factorial(order))
        return predicted

    def _update(self, state: _Taylor, output: np.ndarray) -> None:
        keep = FACTOR_DTYPES[self.cache.taylor_factors_dtype]  # type: ignore[attr-defined]
        made = [output]
        if state.last_update is not None:
            delta = state.step - state.last_update
            for previous in state.factors[: self.cache.max_order]:  # type: ignore[attr-defined]
                made.append((made[-1] - previous.astype(output.dtype)) / np.float32(delta))
        state.factors = [keep(factor) for factor in made]
        state.dtype, state.last_update = output.dtype, state.step
