"""The loaded service: model, store, index and batcher as one typed object.

Made once (in the app lifespan, or by ``cbmir index``) and shared. Blocking work — decoding,
SQLite, FAISS — runs in worker threads; the async methods only await those and the batcher.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import faiss
import numpy as np
from starlette.concurrency import run_in_threadpool

from app.config import Settings
from app.service.batcher import MicroBatcher
from app.service.errors import InvalidInput, NotFound
from app.service.lock import DataDirLock
from app.service.metrics import Metrics
from app.service.snapshots import Snapshotter, open_index
from app.service.store import Item, LabelSource, NewItem, Store
from app.service.uploads import Prepared, Upload, prepare_query, prepare_uploads
from index import FaissIndex
from models.embed import Embedder, Embedding
from models.imaging.decode import decode_image
from models.imaging.render import render_png

log = logging.getLogger(__name__)

Scope = Literal["predicted", "all", "label"]


@dataclass(frozen=True)
class Ingested:
    id: int
    label: str
    label_source: LabelSource
    duplicate: bool


@dataclass(frozen=True)
class Hit:
    id: int
    score: float
    label: str
    metadata: dict[str, Any]


@dataclass(frozen=True)
class SearchOutcome:
    label: str
    confidence: float
    probabilities: dict[str, float]
    scope: Scope
    hits: list[Hit]


@dataclass
class Retriever:
    settings: Settings
    embedder: Embedder
    store: Store
    index: FaissIndex
    batcher: MicroBatcher
    snapshotter: Snapshotter
    metrics: Metrics
    lock: DataDirLock | None = None
    write_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, settings: Settings, metrics: Metrics | None = None) -> Retriever:
        """Lock the data dir, load the model, check it against the store, open the index."""
        metrics = metrics or Metrics()
        lock = DataDirLock(settings.data_dir).acquire()
        store: Store | None = None
        try:
            embedder = Embedder.load(settings.model_dir, settings.device)
            cfg = embedder.config
            store = Store(settings.data_dir)
            store.check_model(cfg.fingerprint, cfg.embedding_dim, cfg.name)
            store.clean_orphans()
            index, dirty = open_index(store, settings, cfg.embedding_dim, cfg.fingerprint)
            write_lock = threading.Lock()
            snapshotter = Snapshotter(
                index, store, settings.index_dir, cfg.fingerprint, write_lock,
                every=settings.snapshot_every, seconds=settings.snapshot_seconds, dirty=dirty,
            )
            batcher = MicroBatcher(
                embedder.embed_prepared, max_batch=settings.batch_max_size,
                wait_ms=settings.batch_wait_ms, max_queue=settings.max_queue,
                on_batch=metrics.observe_batch,
            )
        except BaseException:
            if store is not None:
                store.close()
            lock.release()
            raise
        metrics.track(lambda: len(index), lambda: batcher.pending)
        return cls(settings, embedder, store, index, batcher, snapshotter, metrics, lock,
                   write_lock)

    def close(self) -> None:
        """Drain the batcher, write the final snapshot, release the data dir."""
        self.batcher.close()
        self.snapshotter.close()
        self.store.close()
        if self.lock is not None:
            self.lock.release()

    @property
    def classes(self) -> list[str]:
        return self.embedder.class_names

    def health(self) -> dict[str, Any]:
        cfg = self.embedder.config
        return {
            "status": "ok",
            "model": {"name": cfg.name, "classes": cfg.class_names,
                      "device": str(self.embedder.device), "embedding_dim": cfg.embedding_dim},
            "index": {"backend": "faiss", "size": len(self.index),
                      "type": self.index.index_type},
        }

    # -- ingest ------------------------------------------------------------------------

    def _timed_prepare(self, uploads: list[Upload]) -> tuple[list[Prepared], list[Prepared]]:
        with self.metrics.stage.labels("decode").time():
            prepared = prepare_uploads(uploads, self.embedder, self.classes)
        # Bytes already stored need no forward pass (re-running a bulk import is cheap).
        known = self.store.find_sha([p.sha256 for p in prepared])
        todo = list({p.sha256: p for p in prepared if p.sha256 not in known}.values())
        return prepared, todo

    async def ingest(self, uploads: list[Upload]) -> list[Ingested]:
        prepared, todo = await run_in_threadpool(self._timed_prepare, uploads)
        emb = await self.batcher.embed(np.stack([p.array for p in todo])) if todo else None
        return await run_in_threadpool(self._commit, prepared, todo, emb)

    def ingest_sync(self, uploads: list[Upload]) -> list[Ingested]:
        """The same steps as :meth:`ingest`, for bulk indexing and demo seeding."""
        prepared, todo = self._timed_prepare(uploads)
        emb = self.batcher.embed_sync(np.stack([p.array for p in todo])) if todo else None
        return self._commit(prepared, todo, emb)

    def _commit(
        self, prepared: list[Prepared], todo: list[Prepared], emb: Embedding | None
    ) -> list[Ingested]:
        pos = {p.sha256: i for i, p in enumerate(todo)}

        def embedding_of(p: Prepared) -> tuple[np.ndarray, np.ndarray]:
            if emb is not None and p.sha256 in pos:
                return emb.vectors[pos[p.sha256]], emb.probabilities[pos[p.sha256]]
            # Stored when we looked, deleted since: embed it now (a rare race).
            one = self.batcher.embed_sync(p.array[None])
            return one.vectors[0], one.probabilities[0]

        with self.metrics.stage.labels("commit").time(), self.write_lock:
            known = self.store.find_sha([p.sha256 for p in prepared])
            new: dict[str, NewItem] = {}
            for p in prepared:
                if p.sha256 in known or p.sha256 in new:
                    continue
                vector, probs = embedding_of(p)
                label = p.upload.label or self.classes[int(np.argmax(probs))]
                source: LabelSource = "given" if p.upload.label else "predicted"
                new[p.sha256] = NewItem(
                    p.sha256, p.upload.data, label, source,
                    p.content_type, p.format, p.metadata, vector,
                )
            items = list(new.values())
            if items:
                ids = self.store.insert(items)
                self.index.add(np.array(ids, np.int64), np.stack([it.vector for it in items]),
                               [it.label for it in items])
                for it, item_id in zip(items, ids, strict=True):
                    known[it.sha256] = Item(item_id, it.sha256, it.label, it.label_source,
                                            it.content_type, it.format, it.metadata, "")
        self.snapshotter.note_writes(len(items))
        self.metrics.ingested.inc(len(items))
        fresh = {it.sha256 for it in items}
        out: list[Ingested] = []
        for p in prepared:
            row = known[p.sha256]
            out.append(Ingested(row.id, row.label, row.label_source, p.sha256 not in fresh))
            fresh.discard(p.sha256)  # the same bytes twice in one request: 2nd is a duplicate
        return out

    # -- search ------------------------------------------------------------------------

    async def search(self, data: bytes, k: int, scope: Scope, label: str | None) -> SearchOutcome:
        if label is not None and label not in self.classes:
            raise InvalidInput(f"unknown label {label!r}; known: {', '.join(self.classes)}")
        with self.metrics.stage.labels("decode").time():
            query = await run_in_threadpool(prepare_query, data, self.embedder)
        emb = await self.batcher.embed(query[None])
        return await run_in_threadpool(self._search, emb, k, scope, label)

    def _search(self, emb: Embedding, k: int, scope: Scope, label: str | None) -> SearchOutcome:
        probs = emb.probabilities[0]
        best = int(np.argmax(probs))
        predicted = self.classes[best]
        labels: list[str] | None = None
        if label is not None:
            scope, labels = "label", [label]
        elif scope == "predicted":
            labels = [predicted]
        # One query per request: the service parallelises across requests, and an OpenMP
        # team per single-query search only adds thread coordination (several ms on a
        # busy 2-core machine). The setting is per calling thread, so bulk work elsewhere
        # (index rebuilds) keeps its threads.
        faiss.omp_set_num_threads(1)
        with self.metrics.stage.labels("search").time():
            res = self.index.search(emb.vectors, k, labels)
        ids = [int(i) for i in res.ids[0] if i >= 0]
        rows = self.store.get_many(ids)
        hits = [
            Hit(i, float(s), rows[i].label, rows[i].metadata)
            for i, s in zip(res.ids[0], res.scores[0], strict=True)
            if i >= 0 and int(i) in rows  # a row deleted since the search is skipped
        ]
        return SearchOutcome(
            predicted, float(probs[best]),
            {c: float(p) for c, p in zip(self.classes, probs, strict=True)}, scope, hits,
        )

    # -- items -------------------------------------------------------------------------

    def get(self, item_id: int) -> Item:
        item = self.store.get(item_id)
        if item is None:
            raise NotFound(f"no image with id {item_id}")
        return item

    def original(self, item_id: int) -> tuple[bytes, str]:
        item = self.get(item_id)
        data = self.store.read_original(item)
        if data is None:
            raise NotFound(f"the original of image {item_id} is missing")
        return data, item.content_type

    def png(self, item_id: int) -> bytes:
        data, _ = self.original(item_id)
        return render_png(decode_image(data).image)

    def delete(self, item_id: int) -> None:
        with self.write_lock:
            item = self.store.delete(item_id)
            if item is None:
                raise NotFound(f"no image with id {item_id}")
            self.index.remove([item_id])
            self.store.unlink_original(item.sha256)
        self.snapshotter.note_writes(1)
        log.info("deleted image %d", item_id)


def elapsed_ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 2)
