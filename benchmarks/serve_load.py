"""Load test for `sdrt serve`: C concurrent clients send R text-to-image requests in total to
the OpenAI route; prints throughput and latency percentiles as JSON.

    python benchmarks/serve_load.py --url http://127.0.0.1:7860 --clients 4 --requests 80 --steps 4

Each client sends its next request when the previous one is answered (closed loop). Seeds
differ per request; the batching counters come from the server's /metrics.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import httpx


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def counter(text: str, name: str) -> int:
    found = re.search(rf"^{name} (\d+)$", text, re.MULTILINE)
    return int(found.group(1)) if found else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:7860")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=80)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", default=None, help="WIDTHxHEIGHT (default: the model's native size)")
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args()
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    before = httpx.get(f"{args.url}/metrics", headers=headers).text

    def one(index: int) -> tuple[int, float]:
        payload = {"prompt": f"a photo of a cat, take {index}", "seed": index, "steps": args.steps}
        if args.size:
            payload["size"] = args.size
        started = time.perf_counter()
        response = client.post(f"{args.url}/v1/images/generations", json=payload, headers=headers)
        return response.status_code, time.perf_counter() - started

    with httpx.Client(timeout=600) as client, ThreadPoolExecutor(args.clients) as pool:
        started = time.perf_counter()
        results = list(pool.map(one, range(args.requests)))
        elapsed = time.perf_counter() - started
    after = httpx.get(f"{args.url}/metrics", headers=headers).text
    latencies = [seconds for status, seconds in results if status == 200]
    batches = counter(after, "sdrt_batches_total") - counter(before, "sdrt_batches_total")
    served = counter(after, "sdrt_batched_requests_total") - counter(before, "sdrt_batched_requests_total")
    print(
        json.dumps(
            {
                "clients": args.clients,
                "requests": args.requests,
                "ok": len(latencies),
                "statuses": sorted({status for status, _ in results}),
                "throughput_rps": round(len(latencies) / elapsed, 3),
                "latency_p50_s": round(statistics.median(latencies), 4) if latencies else None,
                "latency_p99_s": round(percentile(latencies, 0.99), 4) if latencies else None,
                "requests_per_call": round(served / batches, 2) if batches else None,
            }
        )
    )


if __name__ == "__main__":
    main()
