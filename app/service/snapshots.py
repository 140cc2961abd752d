"""The FAISS index as data derived from SQLite: open + reconcile at start, snapshot after.

See :mod:`app.service.store` for the durability design this implements.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Literal

import numpy as np

from app.config import Settings
from app.service.faults import NO_FAULTS, Faults
from app.service.store import Store
from index import FaissIndex, IndexCorruptError, IndexMismatchError

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
    if not moved and index.extra.get("max_id") == store.max_id() and len(index) == store.count():
        # Ids are never reused and grow monotonically, so a row added after the snapshot
        # has an id above the snapshot's max_id. Same max id means no such row survived:
        # SQLite's ids are a subset of the snapshot's, and the same count makes them equal.
        # This skips reading every id at start (about a second per million items).
        log.info("loaded index snapshot (max_id %s): in step with SQLite, %d vectors, %.2fs",
                 index.extra.get("max_id"), len(index), time.perf_counter() - t0)
        return index, False
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


class Snapshotter:
    """Saves the index every ``every`` writes or ``seconds`` (when dirty), off the request path.

    Saving holds ``write_lock`` so the snapshot matches a committed SQLite state exactly.
    """

    def __init__(
        self, index: FaissIndex, store: Store, directory: Path, fingerprint: str,
        write_lock: threading.Lock, *, every: int, seconds: float, dirty: bool = False,
        faults: Faults = NO_FAULTS,
    ) -> None:
        self.index, self.store, self.directory = index, store, directory
        self.fingerprint, self.write_lock = fingerprint, write_lock
        self.every, self.seconds = every, seconds
        self.faults = faults
        self._dirty = int(dirty)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._save_lock = threading.Lock()  # FaissIndex.save must not run concurrently
        self._thread = threading.Thread(target=self._run, name="cbmir-snapshot", daemon=True)
        self._thread.start()

    def note_writes(self, n: int) -> None:
        self._dirty += n
        if self._dirty >= self.every:
            self._wake.set()

    def snapshot(self, *, force: bool = False) -> bool:
        with self._save_lock:
            if not self._dirty and not force:
                return False
            t0 = time.perf_counter()
            with self.write_lock:
                extra = {"max_id": self.store.max_id(), "model_fingerprint": self.fingerprint,
                         "relabel_seq": self.store.relabel_seq()}
                self.index.save(self.directory, extra=extra,
                                before_publish=lambda: self.faults.hit("snapshot_write"))
                self._dirty = 0
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
