"""Step caches for the transformer families (opt-in, `--cache NAME[:SETTINGS]`, the request's
`cache`): a model call skips most or all of the transformer when its output can be reused or
predicted. CACHES is the one registry of their names; each is a feature of its own
(sdrt.runtime.features.combinations) that the families list where it runs. What a call runs:
sdrt.runtime.features.cache_runs.

- `first-block:THRESHOLD` — diffusers' FirstBlockCache (`FirstBlockCacheConfig(threshold)`). It
  needs the transformer in parts (`sdrt export --cache-graphs`, sdrt.export.flux_cache): FLUX.1.
- `taylorseer:KEY=VALUE,...` — diffusers' TaylorSeer in its lite mode (`TaylorSeerCacheConfig(
  use_lite_mode=True, ...)`, the keys its fields: cache_interval, disable_cache_before_step,
  disable_cache_after_step, max_order, taylor_factors_dtype = bf16|fp16|fp32). It predicts the
  model's output, so it runs on the one-graph transformer of any export. Its default mode
  predicts every attention module's output inside the blocks, which no exported graph exposes:
  refused (`use_lite_mode=0`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

from sdrt.runtime.features.cache_runs import (
    FACTOR_DTYPES,
    CacheRecord,
    FirstBlockCacheRun,
    TaylorSeerRun,
)
from sdrt.runtime.manifest import CACHE_GRAPHS, Manifest

#: The guidance branches of a batch, in the rows' order (sdrt.runtime.loop.guiders: [negative; positive]),
#: named as the diffusers pipelines' cache contexts.
BRANCHES = {False: ("cond",), True: ("uncond", "cond")}
#: FirstBlockCacheConfig's default threshold.
DEFAULT_THRESHOLD = 0.05
#: TaylorSeerCacheConfig's defaults.
TAYLOR_INTERVAL, TAYLOR_WARMUP, TAYLOR_ORDER, TAYLOR_DTYPE = 5, 3, 1, "bf16"
#: A bound on the settings (a typo's 10**9 steps is refused rather than run).
MAX_SETTING = 10_000
TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes"), ("0", "false", "no")


def _number(text: str, name: str, kind):
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{name} takes a number, got {text!r}") from None


@dataclass(frozen=True)
class FirstBlockCache:
    threshold: float = DEFAULT_THRESHOLD
    name: ClassVar[str] = "first-block"
    feature: ClassVar[str] = "first_block_cache"

    @classmethod
    def parse(cls, settings: str) -> FirstBlockCache:
        """ "THRESHOLD" (empty: diffusers' default)."""
        made = cls(_number(settings, "first-block's threshold", float)) if settings else cls()
        if made.problem():
            raise ValueError(made.problem())
        return made

    def problem(self) -> str | None:
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t < float("inf"):
            return f"the first-block cache threshold must be a finite number >= 0, got {t!r}"
        return None

    @property
    def text(self) -> str:
        return f"{self.name}:{self.threshold:g}"

    def manifest_problem(self, manifest: Manifest) -> str | None:
        if any(name not in manifest.components for name in CACHE_GRAPHS):
            return "this export has no step-cache graphs: re-export it with `sdrt export --cache-graphs` (first-block)"
        return None

    def start(self, pipeline, engine, names, unconditional: bool):
        head, body, tail = (pipeline.optional_engine(name) for name in CACHE_GRAPHS)
        return FirstBlockCacheRun(head, body, tail, float(self.threshold), CacheRecord(BRANCHES[unconditional]))


@dataclass(frozen=True)
class TaylorSeer:
    cache_interval: int = TAYLOR_INTERVAL
    disable_cache_before_step: int = TAYLOR_WARMUP
    disable_cache_after_step: int | None = None
    max_order: int = TAYLOR_ORDER
    taylor_factors_dtype: str = TAYLOR_DTYPE
    name: ClassVar[str] = "taylorseer"
    feature: ClassVar[str] = "taylorseer_cache"

    @classmethod
    def parse(cls, settings: str) -> TaylorSeer:
        """ "KEY=VALUE,..." with TaylorSeerCacheConfig's field names (empty: its defaults)."""
        known = {f.name for f in fields(cls)}
        given: dict = {}
        for item in filter(None, (part.strip() for part in settings.split(","))):
            key, equals, value = item.partition("=")
            key, value = key.strip(), value.strip()
            if key == "use_lite_mode" and equals and value.lower() in TRUE_WORDS:
                continue
            if key == "use_lite_mode" and value.lower() in FALSE_WORDS:
                raise ValueError(
                    "taylorseer runs in diffusers' lite mode only: its default mode predicts every attention's "
                    "output inside the blocks, which the exported graphs do not expose"
                )
            if key not in known or not equals:
                raise ValueError(f"taylorseer takes KEY=VALUE settings of {', '.join(sorted(known))}; got {item!r}")
            given[key] = value if key == "taylor_factors_dtype" else _number(value, key, int)
        made = cls(**given)
        if made.problem():
            raise ValueError(made.problem())
        return made

    def problem(self) -> str | None:
        def whole(value, low: int) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and low <= value <= MAX_SETTING

        if not whole(self.cache_interval, 1):
            return f"taylorseer's cache_interval must be a whole number from 1 to {MAX_SETTING}"
        if not whole(self.disable_cache_before_step, 0):
            return f"taylorseer's disable_cache_before_step must be a whole number from 0 to {MAX_SETTING}"
        if self.disable_cache_after_step is not None and not whole(self.disable_cache_after_step, 0):
            return f"taylorseer's disable_cache_after_step must be a whole number from 0 to {MAX_SETTING}"
        if not whole(self.max_order, 0):
            return f"taylorseer's max_order must be a whole number from 0 to {MAX_SETTING}"
        if self.taylor_factors_dtype not in FACTOR_DTYPES:
            return f"taylorseer's taylor_factors_dtype is one of {', '.join(FACTOR_DTYPES)}"
        return None

    def computes(self, step: int) -> bool:
        """TaylorSeerCacheHook's rule: warm-up steps, every cache_interval-th after, the cool-down."""
        warmup = step < self.disable_cache_before_step
        interval = (step - self.disable_cache_before_step - 1) % self.cache_interval == 0
        cooldown = self.disable_cache_after_step is not None and step >= self.disable_cache_after_step
        return warmup or interval or cooldown

    @property
    def text(self) -> str:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return f"{self.name}:" + ",".join(f"{key}={value}" for key, value in values.items() if value is not None)

    def manifest_problem(self, manifest: Manifest) -> str | None:
        return None

    def start(self, pipeline, engine, names, unconditional: bool):
        return TaylorSeerRun(engine, names.output, self, CacheRecord(BRANCHES[unconditional]))


#: Every step cache, by the name `--cache NAME[:SETTINGS]` gives.
CACHES: dict[str, type[FirstBlockCache] | type[TaylorSeer]] = {
    cache.name: cache for cache in (FirstBlockCache, TaylorSeer)
}
StepCache = FirstBlockCache | TaylorSeer
#: The request field (and server field) that asks for one.
PARAM = "cache"


def parse_cache(text: str) -> StepCache:
    """ "NAME[:SETTINGS]" as its cache (ValueError with what is wrong)."""
    name, _, settings = str(text).strip().partition(":")
    if name not in CACHES:
        raise ValueError(f"unknown step cache {name!r}: choose from {', '.join(CACHES)} (NAME[:SETTINGS])")
    return CACHES[name].parse(settings.strip())


def cache_problem(cache: object, manifest: Manifest) -> str | None:
    """Why `cache` cannot run on this export (the family's refusal is the combinations table's)."""
    if not isinstance(cache, (FirstBlockCache, TaylorSeer)):
        return f"cache must be one of {', '.join(CACHES)} (NAME[:SETTINGS]), got {cache!r}"
    return cache.problem() or cache.manifest_problem(manifest)
