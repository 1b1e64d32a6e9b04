"""Tokenizer latency: `python benchmarks/tokenizer_speed.py [MODEL_OR_TOKENIZER_DIR]`.

Prints the load time and, over the prompts in tests/data/prompts.txt, the median and p90 time
of one `encode` call: cold (word cache emptied before each call, the first request a service
sees for new words) and warm (the same prompt again). Medians over repeated passes.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sdrt.runtime.text.tokenizer import ClipTokenizer  # noqa: E402

PASSES = 20


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "sdrt/export/presets/sd15"
    start = time.perf_counter()
    tokenizer = ClipTokenizer.from_folder(folder)
    load_ms = (time.perf_counter() - start) * 1e3
    prompts = [p for p in (ROOT / "tests/data/prompts.txt").read_text(encoding="utf-8").split("\n") if p]
    cold, warm = [], []
    for _ in range(PASSES):
        for prompt in prompts:
            tokenizer._cache.clear()
            t0 = time.perf_counter()
            tokenizer.encode(prompt)
            t1 = time.perf_counter()
            tokenizer.encode(prompt)
            t2 = time.perf_counter()
            cold.append((t1 - t0) * 1e6)
            warm.append((t2 - t1) * 1e6)
    typical = "an astronaut riding a horse on mars, highly detailed, 8k"
    result = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
        "load_ms": round(load_ms, 1),
        "prompts": len(prompts),
        "passes": PASSES,
        "cold_us": {"median": round(statistics.median(cold), 1), "p90": round(percentile(cold, 0.9), 1)},
        "warm_us": {"median": round(statistics.median(warm), 1), "p90": round(percentile(warm, 0.9), 1)},
        "typical_prompt": typical,
        "typical_ids": int(tokenizer.encode(typical).lengths[0]),
    }
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
