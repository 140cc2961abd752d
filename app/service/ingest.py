"""Adding images: validated uploads → one forward pass for the new bytes → one commit.

Bytes already stored need no forward pass (re-running a bulk import is cheap), and the
same bytes twice come back as the existing id with ``duplicate: true``. The commit holds
the service's write lock: originals on disk, rows in one SQLite transaction, vectors into
the index (see :mod:`app.service.store` for the durability design). Every new image gets
an OOD verdict (:mod:`app.service.ood`), stored with it; under policy ``reject`` an
unlabelled out-of-distribution image fails the whole request before anything is written.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from starlette.concurrency import run_in_threadpool

from app.service.batcher import MicroBatcher
from app.service.metrics import Metrics
from app.service.ood import OodGate, Verdict
from app.service.snapshots import Snapshotter
from app.service.store import Item, LabelSource, NewItem, Store
from app.service.uploads import Prepared, Upload, _describe, prepare_uploads
from index import FaissIndex
from models.embed import Embedder, Embedding


@dataclass(frozen=True)
class Ingested:
    id: int
    label: str
    label_source: LabelSource
    duplicate: bool
    in_distribution: bool | None = None


@dataclass
class Ingester:
    embedder: Embedder
    store: Store
    index: FaissIndex
    batcher: MicroBatcher
    snapshotter: Snapshotter
    metrics: Metrics
    write_lock: threading.Lock
    ood: OodGate

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
        with self.metrics.stage.labels("ood").time():
            verdicts = self.ood.assess(emb.vectors, np.stack([p.array for p in todo])) if (
                emb is not None) else []

        def embedding_of(p: Prepared) -> tuple[np.ndarray, np.ndarray, Verdict]:
            if emb is not None and p.sha256 in pos:
                i = pos[p.sha256]
                return emb.vectors[i], emb.probabilities[i], verdicts[i]
            # Stored when we looked, deleted since: embed it now (a rare race).
            one = self.batcher.embed_sync(p.array[None])
            return one.vectors[0], one.probabilities[0], self.ood.assess(
                one.vectors, p.array[None])[0]

        with self.metrics.stage.labels("commit").time(), self.write_lock:
            known = self.store.find_sha([p.sha256 for p in prepared])
            new: dict[str, NewItem] = {}
            for n, p in enumerate(prepared):
                if p.sha256 in known or p.sha256 in new:
                    continue
                vector, probs, verdict = embedding_of(p)
                if not p.upload.label:
                    # A label the user gave is the user's decision and is kept, flag and all.
                    self.ood.refuse(verdict, _describe(n, p.upload.filename))
                label = p.upload.label or self.classes[int(np.argmax(probs))]
                source: LabelSource = "given" if p.upload.label else "predicted"
                new[p.sha256] = NewItem(
                    p.sha256, p.upload.data, label, source,
                    p.content_type, p.format, p.metadata, vector, verdict.in_distribution,
                )
            items = list(new.values())
            if items:
                ids = self.store.insert(items)
                self.index.add(np.array(ids, np.int64), np.stack([it.vector for it in items]),
                               [it.label for it in items])
                for it, item_id in zip(items, ids, strict=True):
                    known[it.sha256] = Item(item_id, it.sha256, it.label, it.label_source,
                                            it.content_type, it.format, it.metadata, "",
                                            it.in_distribution)
        self.snapshotter.note_writes(len(items))
        self.metrics.ingested.inc(len(items))
        fresh = {it.sha256 for it in items}
        out: list[Ingested] = []
        for p in prepared:
            row = known[p.sha256]
            out.append(Ingested(row.id, row.label, row.label_source, p.sha256 not in fresh,
                                row.in_distribution))
            fresh.discard(p.sha256)  # the same bytes twice in one request: 2nd is a duplicate
        return out
