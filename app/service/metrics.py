"""Prometheus metrics: one registry per app (so several apps can live in one test process).

The service's own instruments (stages, batches, index size, queue) are observed here; the
HTTP counters are filled by :class:`app.api.middleware.MetricsMiddleware`.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "cbmir_http_requests", "HTTP requests by route template and status.",
            ["method", "route", "status"], registry=r,
        )
        self.latency = Histogram(
            "cbmir_http_request_duration_seconds", "HTTP request latency by route template.",
            ["method", "route"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.index_size = Gauge("cbmir_index_size", "Vectors in the search index.", registry=r)
        self.inference = Histogram(
            "cbmir_model_inference_seconds", "Time of one batched CNN forward pass.",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "cbmir_batch_size", "Images per CNN forward pass.", buckets=_BATCH_BUCKETS, registry=r
        )
        self.queue = Gauge(
            "cbmir_batch_queue_images", "Images waiting for the model.", registry=r
        )
        self.stage = Histogram(
            "cbmir_stage_seconds", "Time spent per request stage.", ["stage"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.ingested = Counter(
            "cbmir_images_ingested", "Images added (duplicates excluded).", registry=r
        )
        # Self-healing and durability: what went wrong and was repaired.
        self.batcher_restarts = Counter(
            "cbmir_batcher_restarts", "Times the model's worker thread died and was restarted.",
            registry=r,
        )
        self.index_repairs = Counter(
            "cbmir_index_repairs", "Stored items put back into the index after a failed add.",
            registry=r,
        )
        self.snapshot_failures = Counter(
            "cbmir_snapshot_failures", "Index snapshots that failed (SQLite still has all).",
            registry=r,
        )
        self.snapshot_age = Gauge(
            "cbmir_snapshot_age_seconds",
            "Seconds since the published index snapshot was taken (or since start, if none).",
            registry=r,
        )
        self.storage_full = Counter(
            "cbmir_storage_full", "Writes refused because the data directory's disk is full.",
            registry=r,
        )
        self.decode_bytes = Gauge(
            "cbmir_decode_reserved_bytes", "Memory reserved by image decodes in progress.",
            registry=r,
        )
        self.decode_bytes_peak = Gauge(
            "cbmir_decode_reserved_bytes_peak", "Most memory reserved by decodes at once.",
            registry=r,
        )

    def observe_batch(self, n: int, seconds: float) -> None:
        self.batch_size.observe(n)
        self.inference.observe(seconds)

    def track(self, index_size: Callable[[], int], queue: Callable[[], int],
              snapshot_age: Callable[[], float] | None = None) -> None:
        """Read gauges at scrape time from the live objects (none of them takes a lock)."""
        self.index_size.set_function(lambda: float(index_size()))
        self.queue.set_function(lambda: float(queue()))
        if snapshot_age is not None:
            self.snapshot_age.set_function(snapshot_age)

    def track_decode(self, usage: Callable[[], tuple[int, int]]) -> None:
        """Bytes reserved by decodes now, and at most so far (app.service.decoding)."""
        self.decode_bytes.set_function(lambda: float(usage()[0]))
        self.decode_bytes_peak.set_function(lambda: float(usage()[1]))

    def render(self) -> bytes:
        return generate_latest(self.registry)
