"""Prometheus counters and histograms, written in the text exposition format (no dependency)."""

from __future__ import annotations

import threading
from collections import defaultdict

# Latency buckets in seconds: from a tiny model's milliseconds to a big model's minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.queue_length = 0
        self.in_flight = 0
        self._histograms: dict[str, list[int]] = {}
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)
        self.batches = 0
        self.batched_requests = 0

    def count_request(self, route: str, status: int) -> None:
        with self._lock:
            self.requests[(route, status)] += 1

    def observe(self, stage: str, seconds: float) -> None:
        with self._lock:
            buckets = self._histograms.setdefault(stage, [0] * len(LATENCY_BUCKETS))
            for index, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    buckets[index] += 1
            self._sums[stage] += seconds
            self._counts[stage] += 1

    def observe_batch(self, requests: int) -> None:
        with self._lock:
            self.batches += 1
            self.batched_requests += requests

    def render(self) -> str:
        with self._lock:
            lines = [
                "# HELP sdrt_requests_total Requests answered, by route and status.",
                "# TYPE sdrt_requests_total counter",
            ]
            for (route, status), count in sorted(self.requests.items()):
                lines.append(f'sdrt_requests_total{{route="{route}",status="{status}"}} {count}')
            lines += [
                "# HELP sdrt_queue_length Requests admitted and not finished.",
                "# TYPE sdrt_queue_length gauge",
                f"sdrt_queue_length {self.queue_length}",
                "# HELP sdrt_generations_in_flight Generations running now.",
                "# TYPE sdrt_generations_in_flight gauge",
                f"sdrt_generations_in_flight {self.in_flight}",
                "# HELP sdrt_batches_total generate() calls (each serves one or more requests).",
                "# TYPE sdrt_batches_total counter",
                f"sdrt_batches_total {self.batches}",
                "# HELP sdrt_batched_requests_total Requests served by those calls.",
                "# TYPE sdrt_batched_requests_total counter",
                f"sdrt_batched_requests_total {self.batched_requests}",
                "# HELP sdrt_stage_seconds Time per stage of a generation (stage request: a "
                "request from admission to its result).",
                "# TYPE sdrt_stage_seconds histogram",
            ]
            for stage in sorted(self._histograms):
                for bound, count in zip(LATENCY_BUCKETS, self._histograms[stage]):
                    lines.append(f'sdrt_stage_seconds_bucket{{stage="{stage}",le="{bound}"}} {count}')
                lines.append(f'sdrt_stage_seconds_bucket{{stage="{stage}",le="+Inf"}} {self._counts[stage]}')
                lines.append(f'sdrt_stage_seconds_sum{{stage="{stage}"}} {self._sums[stage]:.6f}')
                lines.append(f'sdrt_stage_seconds_count{{stage="{stage}"}} {self._counts[stage]}')
            return "\n".join(lines) + "\n"
