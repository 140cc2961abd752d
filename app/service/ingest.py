"""Adding images: validated uploads → one forward pass for the new bytes → one commit.

Bytes already stored need no forward pass (re-running a bulk import is cheap), and the
same bytes twice come back as the existing id with ``duplicate: true``. The commit holds
the service's write lock: originals on disk, rows in one SQLite transaction, vectors into
the index (see :mod:`app.service.store` for the durability design).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from starlette.concurrency import run_in_threadpool

from app.service.batcher import MicroBatcher
from app.service.metrics import Metrics
from app.service.snapshots import Snapshotter
from app.service.store import Item, LabelSource, NewItem, Store
from app.service.uploads import Prepared, Upload, prepare_uploads
from index import FaissIndex
from models.embed import Embedder, Embedding


@dataclass(frozen=True)
class Ingested:
    id: int
    label: str
    label_source: LabelSource
    duplicate: bool


@dataclass
class Ingester:
    embedder: Embedder
    store: Store
    index: FaissIndex
    batcher: MicroBatcher
    snapshotter: Snapshotter
    metrics: Metrics
    write_lock: threading.Lock

    @property
    def classes(self) -> list[str]:
        return self.embedder.class_names

    def _timed_prepare(self, uploads: list[Upload]) -> tuple[list[Prepared], list[Prepared]]:
        with self.metrics.stage.labels("decode").time():
            prepared = prepare_uploads(uploads, self.embedder, self.classes)
        # Bytes already stored need no forward pass (re-running a bulk import is cheap).
        known = self.store.find_sha([p.sha256 for p in prepared])
        todo = list({p.sha256: p for p in prepared if p.sha256 not in known}.values())
        return prepared, todo

    async def ingest(self, uploads: list[Upload]) -> list[Ingested]:
        # One worker-thread trip for decode, forward pass and commit (see Searcher.search).
        return await run_in_threadpool(self.ingest_sync, uploads)

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
