"""The loaded service: model, store, index and batcher as one typed object.

Made once (in the app lifespan, or by ``cbmir index``) and shared. It owns the parts and
hands each job to its module: :mod:`~app.service.ingest` (dedup and commit),
:mod:`~app.service.search` (scope and ranking), :mod:`~app.service.items` (one stored
image: row, original, PNG, relabel, delete), :mod:`~app.service.thumbnails` and
:mod:`~app.service.similar` (the web page's grids and "find similar"). Blocking work —
decoding, SQLite, FAISS — runs in worker threads; the async methods only await those and
the batcher.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from app.config import Settings
from app.service.backend import ItemStore, ServiceIndex, Snapshots
from app.service.batcher import MicroBatcher
from app.service.decoding import MB, DecodeGate, Decoder, pixel_cap_for
from app.service.faults import NO_FAULTS, Faults
from app.service.ingest import Ingested, Ingester
from app.service.items import Items
from app.service.links import Links
from app.service.lock import DataDirLock
from app.service.metrics import Metrics
from app.service.ood import OodGate
from app.service.search import NO_OPTIONS, Scope, Searcher, SearchOptions, SearchOutcome
from app.service.similar import similar
from app.service.snapshots import NoSnapshots, Snapshotter, open_index
from app.service.store import Item, ItemFilter, Store
from app.service.thumbnails import Thumbnail, Thumbnails
from app.service.uploads import Upload, render_upload
from app.service.workers import Follower, LeaderLock, SharedWriteLock, check_supervised
from models.embed import Embedder

log = logging.getLogger(__name__)


def _worker_snapshots(follower: Follower | None, leader: LeaderLock | None) -> dict[str, Any]:
    """The snapshotter's options for one of N workers: only the leader saves, after a
    catch-up, recording the relabels its index has applied (app.service.workers)."""
    if follower is None:
        return {}
    return {"leader": leader, "catch_up": follower.catch_up,
            "relabel_seq": lambda: follower.cursor.relabel_seq}


@dataclass
class Retriever:
    settings: Settings
    embedder: Embedder
    store: ItemStore
    index: ServiceIndex
    batcher: MicroBatcher
    snapshotter: Snapshots
    metrics: Metrics
    ood: OodGate
    lock: DataDirLock | None = None
    write_lock: AbstractContextManager[Any] = field(default_factory=threading.Lock)
    faults: Faults = NO_FAULTS
    # `cbmir serve --workers N` on the embedded backend (app.service.workers); else None.
    follower: Follower | None = None
    leader: LeaderLock | None = None
    ingester: Ingester = field(init=False, repr=False)
    searcher: Searcher = field(init=False, repr=False)
    items: Items = field(init=False, repr=False)
    thumbnails: Thumbnails = field(init=False, repr=False)
    decoder: Decoder = field(init=False, repr=False)
    links: Links = field(init=False, repr=False)

    def __post_init__(self) -> None:
        s = self.settings
        self.links = Links(s.dicomweb_url, s.viewer_url_template)
        self.decoder = Decoder(DecodeGate(int(s.decode_memory_mb * MB)),
                               s.decode_pixel_cap or pixel_cap_for(self.embedder.config))
        f = self.follower
        self.ingester = Ingester(self.embedder, self.store, self.index, self.batcher,
                                 self.snapshotter, self.metrics, self.write_lock, self.ood,
                                 self.decoder, self.faults, s.store_originals,
                                 f.catch_up_locked if f is not None else None)
        self.searcher = Searcher(self.embedder, self.store, self.index, self.batcher,
                                 self.metrics, self.ood, self.decoder,
                                 f.catch_up if f is not None else None)
        self.metrics.track_decode(self.decoder.gate.usage)
        self.items = Items(self.store, self.index, self.snapshotter, self.write_lock,
                           self.links, self._archive_fetcher())
        self.thumbnails = Thumbnails(self.items)

    def _archive_fetcher(self) -> Callable[[str], bytes] | None:
        """WADO-RS fetches from CBMIR_DICOMWEB_URL (for ``?original=true`` under
        ``CBMIR_STORE_ORIGINALS=none``); None without an archive."""
        base = self.settings.dicomweb_url
        if base is None:
            return None

        def fetch(url: str) -> bytes:
            from app.service.dicomweb import DicomWebClient

            with DicomWebClient(base) as client:
                return client.fetch(url)

        return fetch

    @classmethod
    def open(cls, settings: Settings, metrics: Metrics | None = None) -> Retriever:
        """Load the model, open the backend (embedded: lock the data dir, open SQLite,
        load and reconcile the FAISS snapshot; shared: connect to PostgreSQL, create or
        migrate its schema) and check the model against the stored vectors."""
        metrics = metrics or Metrics()
        # The data-dir lock keeps a second process off SQLite and the FAISS snapshot; the
        # shared backend has neither, and any number of replicas may run against it. The
        # workers of `cbmir serve --workers N` share their supervisor's.
        workers = settings.embedded_workers
        if workers:
            check_supervised(settings.data_dir)
        lock = None if settings.shared_backend or workers else DataDirLock(
            settings.data_dir).acquire()
        store: ItemStore | None = None
        follower: Follower | None = None
        leader: LeaderLock | None = None
        write_lock: AbstractContextManager[Any] = threading.Lock()
        try:
            embedder = Embedder.load(settings.model_dir, settings.device)
            cfg = embedder.config
            ood = OodGate.open(settings.model_dir, cfg, settings.ood_policy)
            faults = Faults.parse(settings.test_faults)
            index: ServiceIndex
            snapshotter: Snapshots
            if settings.shared_backend:
                from app.service.pg import open_backend

                store, index = open_backend(settings, cfg.embedding_dim, cfg.class_names,
                                            cfg.fingerprint, cfg.name)
                snapshotter = NoSnapshots()
            else:
                sqlite = Store(settings.data_dir, faults)
                store = sqlite
                sqlite.check_model(cfg.fingerprint, cfg.embedding_dim, cfg.name)
                if not workers:  # the supervisor did, before any worker could be writing
                    sqlite.clean_orphans()
                # Where SQLite stands before the index is reconciled with it: a follower
                # re-reads anything committed from here on (app.service.workers).
                feed = (sqlite.data_version(), sqlite.cursor()) if workers else None
                faiss_index, dirty = open_index(sqlite, settings, cfg.embedding_dim,
                                                cfg.fingerprint)
                index = faiss_index
                if feed is not None:
                    version, cursor = feed
                    shared = SharedWriteLock(settings.data_dir)
                    write_lock, leader = shared, LeaderLock(settings.data_dir)
                    follower = Follower(sqlite, faiss_index, shared.local, cursor, version)
                snapshotter = Snapshotter(
                    faiss_index, sqlite, settings.index_dir, cfg.fingerprint,
                    every=settings.snapshot_every, seconds=settings.snapshot_seconds,
                    dirty=dirty, faults=faults, on_failure=metrics.snapshot_failures.inc,
                    **_worker_snapshots(follower, leader),
                )
                if follower is not None:
                    follower.on_applied = snapshotter.note_writes
            batcher = MicroBatcher(
                embedder.embed_prepared, max_batch=settings.batch_max_size,
                wait_ms=settings.batch_wait_ms, max_queue=settings.max_queue,
                on_batch=metrics.observe_batch, on_restart=metrics.batcher_restarts.inc,
                faults=faults,
            )
        except BaseException:
            if store is not None:
                store.close()
            if lock is not None:
                lock.release()
            if leader is not None:
                leader.release()
            raise
        metrics.track(lambda: len(index), lambda: batcher.pending,
                      snapshot_age=lambda: snapshotter.state.age_s)
        return cls(settings, embedder, store, index, batcher, snapshotter, metrics, ood, lock,
                   write_lock, faults, follower, leader)

    def close(self) -> None:
        """Drain the batcher, write the final snapshot, release the data dir."""
        self.metrics.untrack()
        self.batcher.close()
        self.snapshotter.close()
        self.store.close()
        if self.lock is not None:
            self.lock.release()
        if self.leader is not None:
            self.leader.release()
        if isinstance(self.write_lock, SharedWriteLock):
            self.write_lock.close()

    def catch_up(self, timeout: float = -1) -> None:
        """Apply what other workers committed (``--workers N``; else nothing to do)."""
        if self.follower is not None:
            self.follower.catch_up(timeout)

    @property
    def classes(self) -> list[str]:
        return self.embedder.class_names

    def behind(self) -> bool:
        """Whether another worker committed something this one has not applied yet."""
        return self.follower is not None and self.follower.behind()

    def health(self) -> dict[str, Any]:
        """What is loaded and whether it works; reads no lock, so it answers at once even
        while a snapshot is written or an index rebuilt."""
        cfg = self.embedder.config
        batcher, snap = self.batcher, self.snapshotter.state
        degraded = [reason for reason, bad in (
            ("the model's worker thread is not running or is stuck", not batcher.healthy),
            ("the last index snapshot failed", snap.last_error is not None),
            ("the database is unreachable (requests that need it answer 503)",
             not getattr(self.index, "reachable", True)),
        ) if bad]
        return {
            "status": "degraded" if degraded else "ok",
            "problems": degraded,
            "model": {"name": cfg.name, "classes": cfg.class_names,
                      "device": str(self.embedder.device), "embedding_dim": cfg.embedding_dim,
                      "ood": self.ood.info()},
            "index": {"backend": self.index.backend, "size": len(self.index),
                      "type": self.index.index_type},
            "batcher": {"alive": batcher.alive, "restarts": batcher.restarts,
                        "queued_images": batcher.pending},
            "snapshot": {"age_s": round(snap.age_s, 1), "failures": snap.failures,
                         "last_error": snap.last_error},
        }

    # -- the jobs, each in its own module ----------------------------------------------

    async def ingest(self, uploads: list[Upload]) -> list[Ingested]:
        return await self.ingester.ingest(uploads)

    def ingest_sync(self, uploads: list[Upload]) -> list[Ingested]:
        """The same steps as :meth:`ingest`, for bulk indexing and demo seeding."""
        return self.ingester.ingest_sync(uploads)

    async def search(self, data: bytes, k: int, scope: Scope, label: str | None,
                     options: SearchOptions = NO_OPTIONS) -> SearchOutcome:
        return await self.searcher.search(data, k, scope, label, options)

    def get(self, item_id: int) -> Item:
        return self.items.get(item_id)

    def original(self, item_id: int) -> tuple[bytes, str]:
        return self.items.original(item_id)

    def png(self, item_id: int) -> bytes:
        return self.items.png(item_id)

    def delete(self, item_id: int) -> None:
        self.items.delete(item_id)
        self.thumbnails.forget(item_id)

    def delete_where(self, filt: ItemFilter) -> int:
        """Delete a study or a series (``filt`` names its UID); how many were deleted."""
        ids = self.items.delete_where(filt)
        for item_id in ids:
            self.thumbnails.forget(item_id)
        return len(ids)

    # -- what the web page adds: list, curate, thumbnails, find similar, render ---------

    def list_items(
        self, filt: ItemFilter, before: int | None, limit: int
    ) -> tuple[list[Item], int]:
        return self.store.list_items(filt, before, limit)

    def relabel(self, item_id: int, label: str) -> Item:
        return self.items.relabel(item_id, label, self.classes)

    def thumbnail_etag(self, item_id: int) -> str:
        return self.thumbnails.etag(item_id)

    def thumbnail(self, item_id: int) -> Thumbnail:
        return self.thumbnails.get(item_id)

    async def similar(
        self, item_id: int, k: int, scope: Scope, label: str | None
    ) -> SearchOutcome:
        return await similar(self.searcher, item_id, k, scope, label)

    def render(self, data: bytes) -> bytes:
        """The PNG the service makes of an upload; nothing is stored."""
        return render_upload(data, self.decoder)
