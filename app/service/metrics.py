"""Prometheus metrics: one registry per app, or one view of all the workers of ``--workers N``.

The service's own instruments (stages, batches, index size, queue) are observed here; the
HTTP counters are filled by :class:`app.api.middleware.MetricsMiddleware`.

One process (the default, and every test that creates several apps in one process): each
:class:`Metrics` has its own registry, rendered as it is; the gauges that follow live
objects are function gauges, read at scrape time.

``cbmir serve --workers N`` (``Metrics(multiprocess=True)``, in supervised workers only)
-----------------------------------------------------------------------------------------
A scrape is answered by one worker, yet must report the whole service. prometheus_client's
multiprocess mode does that: when it is imported with ``PROMETHEUS_MULTIPROC_DIR`` set,
every value lives in a per-process mmap file in that directory, and
:class:`~prometheus_client.multiprocess.MultiProcessCollector` merges all the files at
scrape time. That choice is global to a process and made at import, which is why only the
supervisor sets the variable (:func:`shared_metrics_dir`) and only for the workers it
spawns; a process without it keeps the per-app registries above.

* **Counters and histograms** are summed over every file, those of dead workers included,
  so no total goes backwards when a worker is killed and replaced. (The ``_created``
  series are not written in this mode: a prometheus_client limitation.)
* **Gauges**, by ``multiprocess_mode``:

  - ``cbmir_index_size``: ``mostrecent``. Every worker follows the same store, and the
    answering worker has just caught up with it (the ``/metrics`` route does so first),
    so its value, set right before rendering, is the freshest. It is set only then, never
    in the background: a worker that has not caught up would stamp a stale count newer.
  - ``cbmir_snapshot_age_seconds``: ``mostrecent``, set the same way: the age the
    answering worker's ``/health`` reports. One worker, the leader, writes the snapshots;
    the others learn the published time at their next snapshot tick, so theirs may be up
    to one ``CBMIR_SNAPSHOT_SECONDS`` older than the leader's. ``livemin`` would pick the
    leader's, but also the 0 of a worker still loading (a gauge's file holds 0 until the
    gauge is first set), and the frozen value of a dead worker if it were not forgotten.
  - ``cbmir_batch_queue_images``, ``cbmir_decode_reserved_bytes``: ``livesum``, what
    waits or is reserved in all the live workers together (0 while one loads).
  - ``cbmir_decode_reserved_bytes_peak``: ``max``, the most any one worker reserved at once
    since the service started (the decode budget is per process), dead workers included.

  A function gauge cannot be read by another process (its value is never in a file), so
  each worker copies the ``live*`` and ``max`` ones into its gauges every
  :data:`REFRESH_S` (a daemon thread) and right before it renders: the answering worker's
  own values are current, the others' at most :data:`REFRESH_S` old.
* **Dead workers**: the ``live*`` gauges must drop a dead worker's file
  (:func:`~prometheus_client.multiprocess.mark_process_dead`), or its last queue length
  would be added forever. uvicorn's supervisor has no hook for it, so
  :class:`app.supervisor.Supervisor` calls it for every worker that leaves its list (died
  and replaced, or retired by SIGHUP/SIGTTOU), after that worker was joined. A worker may
  be given the pid of a dead one whose files are still there; so each worker also drops
  the live files under its own pid when it starts, before any metric exists
  (:func:`start_worker_metrics`). Nothing is cleaned at a worker's own exit: its
  supervisor does it, or removes the whole directory when it stops.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import values as prometheus_values
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client itself
REFRESH_S = 1.0  # how stale another worker's function-gauge values may be in a scrape
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def values_in_files() -> bool:
    """Whether prometheus_client keeps this process's values in mmap files (it decided so
    when it was imported, from ``PROMETHEUS_MULTIPROC_DIR``)."""
    return bool(getattr(prometheus_values.ValueClass, "_multiprocess", False))


@contextlib.contextmanager
def shared_metrics_dir() -> Iterator[Path]:
    """In the supervisor of ``--workers N``: a fresh private directory (``mkdtemp``: a new
    name, mode 0700) for the workers' metric files, exported as ``PROMETHEUS_MULTIPROC_DIR``
    to the processes spawned from now on; removed, and the variable restored, on exit.

    Never a fixed or inherited path: files left by another server (or an earlier run)
    would be summed into this one's counters. A supervisor killed by SIGKILL leaves its
    directory behind (in ``$TMPDIR``), which no later server reads."""
    path = Path(tempfile.mkdtemp(prefix="cbmir-metrics-"))
    previous = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = str(path)
    log.debug("worker metrics in %s", path)
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous
        shutil.rmtree(path, ignore_errors=True)


def start_worker_metrics() -> None:
    """In a supervised worker, before any metric exists: drop the live-gauge files that a
    dead worker with this pid left (their values would be read back as this one's)."""
    path = os.environ.get(MULTIPROC_ENV)
    if path and values_in_files():
        mark_process_dead(os.getpid(), path)


def forget_worker(pid: int, path: Path) -> None:
    """In the supervisor: worker ``pid`` is gone; its live gauges must no longer count."""
    mark_process_dead(pid, str(path))


class Metrics:
    def __init__(self, multiprocess: bool = False) -> None:
        """``multiprocess``: merge every worker's values at scrape time (see the module's
        docstring); only possible where prometheus_client was imported in that mode,
        else this process's values alone are reported, as with one process."""
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "cbmir_http_requests", "HTTP requests by route template and status.",
            ["method", "route", "status"], registry=r,
        )
        self.latency = Histogram(
            "cbmir_http_request_duration_seconds", "HTTP request latency by route template.",
            ["method", "route"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.index_size = Gauge("cbmir_index_size", "Vectors in the search index.", registry=r,
                                multiprocess_mode="mostrecent")
        self.inference = Histogram(
            "cbmir_model_inference_seconds", "Time of one batched CNN forward pass.",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "cbmir_batch_size", "Images per CNN forward pass.", buckets=_BATCH_BUCKETS, registry=r
        )
        self.queue = Gauge(
            "cbmir_batch_queue_images", "Images waiting for the model.", registry=r,
            multiprocess_mode="livesum",
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
            registry=r, multiprocess_mode="mostrecent",
        )
        self.storage_full = Counter(
            "cbmir_storage_full", "Writes refused because the data directory's disk is full.",
            registry=r,
        )
        self.decode_bytes = Gauge(
            "cbmir_decode_reserved_bytes", "Memory reserved by image decodes in progress.",
            registry=r, multiprocess_mode="livesum",
        )
        self.decode_bytes_peak = Gauge(
            "cbmir_decode_reserved_bytes_peak", "Most memory reserved by decodes at once.",
            registry=r, multiprocess_mode="max",
        )
        self._exposed = r
        self.multiprocess = False
        path = os.environ.get(MULTIPROC_ENV)
        if multiprocess:
            if path and values_in_files():
                # The instruments above write to this process's files; what a scrape
                # renders is every process's files, merged (never `r`: that would count
                # this worker twice).
                self._exposed = CollectorRegistry()
                MultiProcessCollector(self._exposed, path=path)
                self.multiprocess = True
            else:
                log.warning("%s was not set when this process started: /metrics reports "
                            "this worker alone", MULTIPROC_ENV)
        # Multiprocess mode: (gauge, read, in the background too) for each function gauge.
        self._sampled: list[tuple[Gauge, Callable[[], float], bool]] = []
        self._sampled_lock = threading.Lock()
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None
        self._sample_failed = False

    def observe_batch(self, n: int, seconds: float) -> None:
        self.batch_size.observe(n)
        self.inference.observe(seconds)

    def track(self, index_size: Callable[[], int], queue: Callable[[], int],
              snapshot_age: Callable[[], float] | None = None) -> None:
        """Read gauges from the live objects (none of them takes a lock): at scrape time,
        and under ``--workers N`` the queue also every :data:`REFRESH_S`."""
        self._follow(self.index_size, lambda: float(index_size()), background=False)
        self._follow(self.queue, lambda: float(queue()))
        if snapshot_age is not None:
            self._follow(self.snapshot_age, snapshot_age, background=False)

    def track_decode(self, usage: Callable[[], tuple[int, int]]) -> None:
        """Bytes reserved by decodes now, and at most so far (app.service.decoding)."""
        self._follow(self.decode_bytes, lambda: float(usage()[0]))
        self._follow(self.decode_bytes_peak, lambda: float(usage()[1]))

    def untrack(self) -> None:
        """Multiprocess mode: stop copying the function gauges (their objects are closing).
        One process: nothing to do (a function gauge is read only when scraped)."""
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join(5)
        with self._sampled_lock:
            self._sampled.clear()

    def _follow(self, gauge: Gauge, read: Callable[[], float], background: bool = True) -> None:
        if not self.multiprocess:
            gauge.set_function(read)
            return
        with self._sampled_lock:
            self._sampled.append((gauge, read, background))
        if not background:
            return  # set only by the scrape that renders it
        self._sample_one(gauge, read)
        if self._refresher is None and not self._stop.is_set():
            self._refresher = threading.Thread(target=self._refresh, name="cbmir-metrics",
                                               daemon=True)
            self._refresher.start()

    def _sample(self, background_only: bool) -> None:
        with self._sampled_lock:
            sampled = list(self._sampled)
        for gauge, read, background in sampled:
            if background or not background_only:
                self._sample_one(gauge, read)

    def _sample_one(self, gauge: Gauge, read: Callable[[], float]) -> None:
        try:
            gauge.set(read())
        except Exception:  # a gauge is not worth a failed scrape; said once, not per tick
            if not self._sample_failed:
                self._sample_failed = True
                log.exception("could not read the value of a gauge")

    def _refresh(self) -> None:
        while not self._stop.wait(REFRESH_S):
            self._sample(background_only=True)

    def render(self) -> bytes:
        if self.multiprocess:
            self._sample(background_only=False)  # this worker's values as of now
        return generate_latest(self._exposed)
