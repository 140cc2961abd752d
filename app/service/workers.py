"""``cbmir serve --workers N`` on the embedded backend: N full service processes, one data dir.

Design (the simplest thing that is correct; measured in ``bench/RESULTS.md``)
----------------------------------------------------------------------------
* **Every worker is a whole service** (model, batcher, SQLite store, its own in-memory
  FAISS index), started by uvicorn's supervisor on one listening socket. SQLite in WAL
  mode is safe for several processes; it already is the source of truth.
* **Writes are serialised across workers** by :class:`SharedWriteLock`: the process's
  write lock, then an ``flock`` on ``DATA_DIR/.write.lock``, for exactly the sections
  one process already serialises (dedup check + originals + rows + index; delete; relabel).
  So two workers receiving the same bytes at once answer one ``duplicate: false`` and one
  ``duplicate: true``, and a delete never unlinks an original another worker is re-using.
* **Each worker's index follows SQLite** (:class:`Follower`): before a search ranks, and
  before ``/health`` and ``/metrics`` count, one ``PRAGMA data_version`` says whether any
  connection committed since; if so the worker reads, in one transaction, the rows with
  ids above its cursor (ids are given in commit order), the ids logged in ``deletions``
  (a trigger, schema version 3) and in ``relabels``, and applies them. A client that gets
  a 200 from ``POST /index`` on one worker therefore finds the item with its next search
  on any worker (read-your-writes), and every worker counts the same items.
* **One worker writes snapshots**: the holder of an ``flock`` on ``DATA_DIR/.leader``
  (:class:`LeaderLock`, tried at every snapshot tick, so the kernel hands it to another
  worker when the holder dies). It catches up before saving and records the relabel
  sequence its index has applied. The others load the newest snapshot at start and
  reconcile it with SQLite by id, as one process does.
* **The supervisor holds the exclusive** ``DATA_DIR/.lock`` for its whole life (a second
  ``cbmir serve`` or ``cbmir index`` is refused as before); a worker checks that the
  holder is its parent (:func:`check_supervised`) and dies with it (``PR_SET_PDEATHSIG``).
  The supervisor also creates or migrates the store and removes orphaned originals once,
  before any worker starts; a restarted worker never does (another may be mid-write).

What each worker still does for itself: it applies the rebuild policy (IVF/HNSW) to its own
copy of the index, so a retrain costs N times the CPU, and the worker whose catch-up
triggers one answers that request late. ``--workers 1`` uses none of this.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import numpy as np

from app.service.lock import DataDirLock, DataDirLocked
from app.service.store import ChangeCursor, Changes, Store
from index import FaissIndex

log = logging.getLogger(__name__)

WRITE_LOCK_FILE = ".write.lock"
LEADER_FILE = ".leader"
_PR_SET_PDEATHSIG = 1


class SharedWriteLock:
    """The process's write lock, then an exclusive ``flock`` shared by every worker.

    ``local`` is the process part alone: enough for what changes only this process's
    index (a catch-up), which must not wait for another worker's write."""

    def __init__(self, data_dir: Path) -> None:
        self.local = threading.Lock()
        self._fd = os.open(Path(data_dir) / WRITE_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)

    def __enter__(self) -> SharedWriteLock:
        self.local.acquire()
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self.local.release()
            raise
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self.local.release()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


class LeaderLock(DataDirLock):
    """``flock`` on ``DATA_DIR/.leader``: the worker holding it writes the snapshots."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir, LEADER_FILE)

    def try_acquire(self) -> bool:
        """Take it if nobody holds it; True if this process holds it now."""
        was_held = self.held
        if not super().try_acquire():
            return False
        if not was_held:
            log.info("this worker (pid %d) now writes the index snapshots", os.getpid())
        return True


class Follower:
    """Keeps this process's in-memory index in step with what other processes commit.

    ``cursor`` must be read (:meth:`Store.cursor`) *before* the index was reconciled with
    SQLite at start, so nothing committed meanwhile is missed; applying a change twice is
    harmless (adds skip ids present, removes ignore ids absent, relabels re-read the row).
    """

    def __init__(self, store: Store, index: FaissIndex, lock: threading.Lock,
                 cursor: ChangeCursor, version: int,
                 on_applied: Callable[[int], None] | None = None) -> None:
        self.store, self.index, self.lock = store, index, lock
        self.cursor = cursor
        self._version = version
        self.on_applied = on_applied  # the snapshotter's note_writes: the index changed
        self.applied = 0  # changes applied since start (for tests and logs)

    def behind(self) -> bool:
        """Whether any connection committed since the last catch-up (one ``PRAGMA``)."""
        return self.store.data_version() != self._version

    def catch_up(self, timeout: float = -1) -> int:
        """Apply what was committed since the last call; how many changes were applied.
        Waits up to ``timeout`` s for this process's write lock (-1: as long as it takes);
        0 without waiting when nothing was committed."""
        if not self.behind():
            return 0
        if not self.lock.acquire(timeout=timeout):
            return 0
        try:
            return self.catch_up_locked()
        finally:
            self.lock.release()

    def catch_up_locked(self) -> int:
        """:meth:`catch_up` for a caller that holds this process's write lock."""
        version = self.store.data_version()  # before the reads: a later commit is re-read
        if version == self._version:
            return 0
        changes = self.store.changes_since(self.cursor, self.index.dim)
        n = self.apply(changes)
        self.cursor, self._version = changes.cursor, version
        return n

    def apply(self, changes: Changes) -> int:
        if changes.empty:
            return 0
        removed = self.index.remove(changes.deleted) if len(changes.deleted) else 0
        ids, vecs, labels = changes.relabelled
        moved = 0
        if len(ids):
            self.index.remove(ids)
            self.index.add(ids, vecs, labels)
            moved = len(ids)
        ids, vecs, labels = changes.added
        added = 0
        if len(ids):
            keep = np.isin(ids, self.index.missing(ids))  # this process's own are in
            if keep.any():
                self.index.add(ids[keep], vecs[keep],
                               [lb for lb, k in zip(labels, keep, strict=True) if k])
                added = int(keep.sum())
        n = added + removed + moved
        if n:
            log.debug("caught up: +%d, -%d, %d relabelled", added, removed, moved)
        self.applied += n
        if n and self.on_applied is not None:
            self.on_applied(n)
        return n


def check_supervised(data_dir: Path) -> None:
    """In a worker: the data dir's exclusive lock must be held by our supervisor (the
    parent process), else this worker is not part of a ``cbmir serve --workers N``."""
    probe = DataDirLock(data_dir)
    if probe.try_acquire():
        probe.release()
        raise DataDirLocked(f"data directory {data_dir} is not locked by a supervisor: "
                            "CBMIR_WORKERS is set by `cbmir serve --workers N` only")
    holder = probe.holder()
    if holder != str(os.getppid()):
        raise DataDirLocked(
            f"data directory {data_dir} is in use by another cbmir process "
            f"(pid {holder}), not by this worker's supervisor")


def die_with_parent() -> None:
    """Linux: SIGTERM this process when its supervisor dies (no orphan keeps serving a
    data dir whose lock is gone). No-op elsewhere."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
