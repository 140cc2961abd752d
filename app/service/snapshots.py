"""The FAISS index as data derived from SQLite: open + reconcile at start, snapshot after.

See :mod:`app.service.store` for the durability design this implements.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from app.config import Settings
from app.service.faults import NO_FAULTS, Faults
from app.service.store import Store
from index import FaissIndex, IndexCorruptError, IndexMismatchError, storage

if TYPE_CHECKING:
    from app.service.workers import LeaderLock

log = logging.getLogger(__name__)


def _device(settings: Settings) -> Literal["cpu", "auto"]:
    # The model may run on CUDA while FAISS is CPU-only; "auto" uses a GPU FAISS if present.
    return "cpu" if settings.device == "cpu" else "auto"


def _new(settings: Settings, dim: int, fingerprint: str) -> FaissIndex:
    return FaissIndex(
        dim, model_fingerprint=fingerprint, index_type=settings.index_type,
        approx_min_size=settings.approx_min_size, device=_device(settings),
    )


def _add_from_store(index: FaissIndex, store: Store, dim: int, ids: np.ndarray | None) -> int:
    added = 0
    for chunk_ids, vecs, labels in store.vectors(dim, ids):
        index.add(chunk_ids, vecs, labels)
        added += len(chunk_ids)
    return added


def open_index(
    store: Store, settings: Settings, dim: int, fingerprint: str
) -> tuple[FaissIndex, bool]:
    """Load the snapshot and reconcile it with SQLite, or rebuild from stored vectors.

    Returns the index and whether it differs from the snapshot on disk (so it is saved).
    """
    t0 = time.perf_counter()
    directory = settings.index_dir
    index: FaissIndex | None = None
    if FaissIndex.exists(directory):
        try:
            index = FaissIndex.load(
                directory, model_fingerprint=fingerprint, dim=dim,
                index_type=settings.index_type, approx_min_size=settings.approx_min_size,
                device=_device(settings),
            )
        except (IndexMismatchError, IndexCorruptError, ValueError) as e:
            log.warning("index snapshot unusable, rebuilding from SQLite: %s", e)
    else:
        log.info("no index snapshot in %s", directory)
    if index is None:
        index = _new(settings, dim, fingerprint)
        n = _add_from_store(index, store, dim, None)
        log.info("built index from %d stored vectors in %.2fs", n, time.perf_counter() - t0)
        return index, True
    # Relabelled since the snapshot: same ids, other label. Taken out here, put back under
    # their new label below, with the rows missing from the snapshot.
    relabelled = store.relabelled_since(int(index.extra.get("relabel_seq", 0)))
    moved = index.remove(relabelled) if len(relabelled) else 0
    # Always by id, never by count: an add that failed after its commit leaves a row the
    # snapshot lacks, and a delete since can make the counts (and the max id) agree anyway.
    # Reading every id costs about a second per million items.
    db_ids, snap_ids = store.ids(), index.ids()
    stale = np.setdiff1d(snap_ids, db_ids)
    missing = np.setdiff1d(db_ids, snap_ids)
    removed = index.remove(stale) if len(stale) else 0
    added = _add_from_store(index, store, dim, missing) if len(missing) else 0
    log.info(
        "loaded index snapshot (max_id %s): +%d from SQLite (%d of them relabelled), "
        "-%d deleted, %d vectors, %.2fs", index.extra.get("max_id"), added, moved, removed,
        len(index), time.perf_counter() - t0,
    )
    return index, bool(added or removed or moved)


@dataclass
class SnapshotState:
    """What ``/health`` and the metrics say about snapshots."""

    saved_at: float  # wall time of the published snapshot (process start if none)
    failures: int = 0  # since start
    last_error: str | None = None  # of the latest attempt; None once one succeeds

    @property
    def age_s(self) -> float:
        return max(0.0, time.time() - self.saved_at)


class Snapshotter:
    """Saves the index every ``every`` writes or ``seconds`` (when dirty), off the request path.

    It takes no service lock: the index excludes its own writers only while its files are
    written (:meth:`FaissIndex.save`), and the snapshot need not match one SQLite state,
    since start-up reconciles it with SQLite id by id. Failures are counted, not fatal:
    SQLite still has everything, and the next tick retries.
    """

    def __init__(
        self, index: FaissIndex, store: Store, directory: Path, fingerprint: str,
        *, every: int, seconds: float, dirty: bool = False, faults: Faults = NO_FAULTS,
        on_failure: Callable[[], None] | None = None, leader: LeaderLock | None = None,
        catch_up: Callable[[], int] | None = None, relabel_seq: Callable[[], int] | None = None,
    ) -> None:
        self.index, self.store, self.directory = index, store, directory
        # `cbmir serve --workers N` (app.service.workers): only the leader saves; every
        # worker catches up with SQLite first; the relabel sequence its index has applied.
        self.leader, self._catch_up = leader, catch_up
        self._relabel_seq = relabel_seq or store.relabel_seq
        self.fingerprint = fingerprint
        self.every, self.seconds = every, seconds
        self.faults = faults
        self._on_failure = on_failure or (lambda: None)
        self._dirty = int(dirty)
        self._dirty_lock = threading.Lock()
        self.state = SnapshotState(_published_at(directory))
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._save_lock = threading.Lock()  # FaissIndex.save must not run concurrently
        self._thread = threading.Thread(target=self._run, name="cbmir-snapshot", daemon=True)
        self._thread.start()

    def note_writes(self, n: int) -> None:
        with self._dirty_lock:
            self._dirty += n
            due = self._dirty >= self.every
        if due:
            self._wake.set()

    def snapshot(self, *, force: bool = False) -> bool:
        if self._catch_up is not None:
            self._catch_up()  # what other workers committed (noted as writes)
        if self.leader is not None and not self.leader.try_acquire():
            # Another worker saves: the age reported is that of the snapshot it published.
            self.state.saved_at = _published_at(self.directory, self.state.saved_at)
            with self._dirty_lock:  # still dirty should it lead, but no wake-up per write
                self._dirty = min(self._dirty, 1)
            return False
        with self._save_lock:
            with self._dirty_lock:
                taken = self._dirty
            if not taken and not force:
                return False
            t0 = time.perf_counter()
            # Read before the save and no lock held: a relabel during the save has a later
            # sequence number, so start-up re-applies it whichever label the files caught.
            extra = {"max_id": self.store.max_id(), "model_fingerprint": self.fingerprint,
                     "relabel_seq": self._relabel_seq()}
            try:
                self.index.save(self.directory, extra=extra,
                                before_publish=lambda: self.faults.hit("snapshot_write"),
                                unlocked=lambda: self.faults.hit("snapshot_hold"))
            except Exception as e:
                self.state.failures += 1
                self.state.last_error = f"{type(e).__name__}: {e}".splitlines()[0][:200]
                self._on_failure()
                raise
            with self._dirty_lock:
                self._dirty -= taken  # writes during the save stay counted for the next one
            self.state.saved_at, self.state.last_error = time.time(), None
            log.info("index snapshot saved (%d vectors) in %.2fs", len(self.index),
                     time.perf_counter() - t0)
            return True

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.seconds)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.snapshot()
            except Exception:  # the next tick retries; SQLite still has everything
                log.exception("index snapshot failed")

    def close(self) -> None:
        """Stop the thread and write a final snapshot if anything changed."""
        self._stop.set()
        self._wake.set()
        self._thread.join(30)
        try:
            self.snapshot()
        except Exception:
            log.exception("final index snapshot failed; it will be rebuilt at next start")


class NoSnapshots:
    """The snapshot policy where the database is the index: nothing to save, ever."""

    @property
    def state(self) -> SnapshotState:
        return SnapshotState(time.time())

    def note_writes(self, n: int) -> None:
        pass

    def snapshot(self, *, force: bool = False) -> bool:
        return False

    def close(self) -> None:
        pass


def _published_at(directory: Path, otherwise: float | None = None) -> float:
    """When the published snapshot was written (its sidecar's mtime), else ``otherwise``
    (default: now)."""
    try:
        snap = storage.current_snapshot(directory)
        if snap is not None:
            return (snap / storage.SIDECAR).stat().st_mtime
    except (OSError, IndexCorruptError):
        pass
    return time.time() if otherwise is None else otherwise
