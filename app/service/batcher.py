"""Micro-batching: concurrent requests share one CNN forward pass.

A single worker thread owns the model. Requests submit a job (their prepared ``uint8``
images) and get a ``concurrent.futures.Future``; async callers await it through
:func:`asyncio.wrap_future`, so the event loop never blocks on inference. The worker takes
the first waiting job and every job already queued behind it (up to ``max_batch`` images),
runs one ``embed`` call and splits the result back per job. A job is never split, so a
request's images always come from one forward pass.

Waiting for companions is adaptive: only when the previous batch held more than one job
(concurrent traffic) does the worker wait up to ``wait_ms`` for more. A lone client never
pays that wait, and under load the queue fills while the previous forward pass runs, so
batches form on their own (bench/RESULTS.md: p50 at one client fell by the whole wait).

Back-pressure: when more than ``max_queue`` images would be waiting, :class:`Overloaded`
(an :class:`~app.service.errors.Unavailable`: the client is told to retry) is raised at
once rather than letting latency grow unbounded.

Self-healing: a failing forward pass fails only its batch. Anything else that ends the
worker thread (a bug, an injected ``batcher_crash``) fails the batch it held with
:class:`WorkerFailed` (503, retry) and the worker is started again at once; restarts are
counted (``cbmir_batcher_restarts``) and :attr:`MicroBatcher.healthy` is false while no
worker runs or while images have waited longer than ``stall_s`` (a hung forward pass), so
``/health`` says ``degraded``. No caller is ever left waiting on a dead thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from app.service.errors import Unavailable
from app.service.faults import NO_FAULTS, Faults
from models.embed import Embedding

log = logging.getLogger(__name__)


class Overloaded(Unavailable):
    """Too many images are waiting for the model."""


class WorkerFailed(Unavailable):
    """The model's worker thread failed while holding this request's batch."""


@dataclass
class _Job:
    images: np.ndarray
    future: Future[Embedding] = field(default_factory=Future)
    queued_at: float = field(default_factory=time.monotonic)

    @property
    def n(self) -> int:
        return len(self.images)


class MicroBatcher:
    def __init__(
        self,
        embed: Callable[[np.ndarray], Embedding],
        *,
        max_batch: int = 64,
        wait_ms: float = 2.0,
        max_queue: int = 256,
        on_batch: Callable[[int, float], None] | None = None,
        on_restart: Callable[[], None] | None = None,
        stall_s: float = 30.0,
        faults: Faults = NO_FAULTS,
    ) -> None:
        self._embed = embed
        self.max_batch = max_batch
        self.wait_s = wait_ms / 1000.0
        self.max_queue = max_queue
        self.stall_s = stall_s
        self._on_batch = on_batch or (lambda n, s: None)
        self._on_restart = on_restart or (lambda: None)
        self._faults = faults
        self._jobs: deque[_Job] = deque()
        self._pending = 0  # images queued, not yet taken by the worker
        self._cond = threading.Condition()
        self._closed = False
        self._last_jobs = 0  # jobs in the previous batch: >1 means concurrent traffic
        self.restarts = 0
        self._running_since: float | None = None  # a forward pass in progress, since
        self._thread = self._start_worker()

    def _start_worker(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="cbmir-batcher", daemon=True)
        thread.start()
        return thread

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def healthy(self) -> bool:
        """A worker runs and nothing has waited on it longer than ``stall_s``."""
        if self._closed:
            return True
        if not self.alive:
            return False
        now = time.monotonic()
        running = self._running_since
        jobs = self._jobs
        oldest = jobs[0].queued_at if jobs else None  # a racy peek is fine for a probe
        return all(t is None or now - t < self.stall_s for t in (running, oldest))

    def submit(self, images: np.ndarray) -> Future[Embedding]:
        """Queue ``uint8`` (N, C, S, S) images; raises :class:`Overloaded` when full."""
        job = _Job(images)
        with self._cond:
            if self._closed:
                raise Unavailable("service is shutting down")
            # A job bigger than the whole queue is still let in when nothing waits,
            # otherwise it could never run.
            if self._pending and self._pending + job.n > self.max_queue:
                raise Overloaded(
                    f"server busy: {self._pending} images waiting for the model, retry shortly"
                )
            self._jobs.append(job)
            self._pending += job.n
            self._cond.notify()
        return job.future

    async def embed(self, images: np.ndarray) -> Embedding:
        return await asyncio.wrap_future(self.submit(images))

    def embed_sync(self, images: np.ndarray) -> Embedding:
        return self.submit(images).result()

    def close(self, timeout: float = 10.0) -> None:
        """Finish the jobs already queued, then stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # -- worker ------------------------------------------------------------------------

    def _take(self) -> list[_Job] | None:
        with self._cond:
            while not self._jobs:
                if self._closed:
                    return None
                self._cond.wait()
            batch = [self._jobs.popleft()]
            total = batch[0].n
            wait_s = self.wait_s if self._last_jobs > 1 else 0.0
            deadline = time.monotonic() + wait_s
            while total < self.max_batch:
                if self._jobs:
                    if total + self._jobs[0].n > self.max_batch:
                        break  # left at the head: it starts the next batch
                    job = self._jobs.popleft()
                    batch.append(job)
                    total += job.n
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    break
                self._cond.wait(remaining)
            self._pending -= total
            self._last_jobs = len(batch)
            return batch

    def _run(self) -> None:
        batch: list[_Job] | None = []
        try:
            while (batch := self._take()) is not None:
                self._faults.hit("batcher_crash")
                self._process(batch)
                batch = []
        except BaseException:
            log.exception("the batcher's worker thread died; starting a new one")
            for j in batch or []:
                if not j.future.done():
                    j.future.set_exception(
                        WorkerFailed("the model's worker failed on this request; retry")
                    )
            self._restart()

    def _restart(self) -> None:
        with self._cond:
            self._running_since = None
            if self._closed:
                return
            self.restarts += 1
            self._thread = self._start_worker()
        self._on_restart()

    def _process(self, batch: list[_Job]) -> None:
        # Jobs whose caller went away (cancelled future) are dropped unrun.
        live = [j for j in batch if j.future.set_running_or_notify_cancel()]
        if not live:
            return
        # Always a fresh array: callers may hand in read-only views of decoded images.
        images = np.concatenate([j.images for j in live])
        t0 = time.perf_counter()
        self._running_since = time.monotonic()
        try:
            out = self._embed(images)
        except Exception as e:  # delivered to every waiting request
            log.exception("embedding a batch of %d images failed", len(images))
            for j in live:
                j.future.set_exception(e)
            return
        finally:
            self._running_since = None
        self._on_batch(len(images), time.perf_counter() - t0)
        start = 0
        for j in live:
            end = start + j.n
            j.future.set_result(Embedding(out.vectors[start:end], out.probabilities[start:end]))
            start = end
