"""Adding images: validated uploads → one forward pass for the new bytes → one commit.

Bytes already stored need no forward pass (re-running a bulk import is cheap), and the
same bytes twice come back as the existing id with ``duplicate: true``. A DICOM image is
the same item as a stored one when it has the same SOP Instance UID and frame, whatever
its transfer syntax or header edits (:attr:`~app.service.uploads.Prepared.key`): the
first version stays. The commit holds
the service's write lock: originals on disk, rows in one SQLite transaction, vectors into
the index (see :mod:`app.service.store` for the durability design). Every new image gets
an OOD verdict (:mod:`app.service.ood`), stored with it; under policy ``reject`` an
unlabelled out-of-distribution image fails the whole request before anything is written.

Repair: if the vectors cannot be added to the index after the rows committed, the add is
retried at once; if it fails again the request answers 503 (:class:`NotYetSearchable`),
and whichever request next meets those bytes (the client's retry, typically) finds the
rows stored but missing from the index and adds them from their stored vectors. Start-up
reconciles the index with SQLite id by id as well (:func:`app.service.snapshots.open_index`).

Writes run in worker threads under their own limit (:data:`WRITE_THREADS`): a write can
wait on the write lock for a long time (an index rebuild), and queued writes must never
take every thread the searches need.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np

from app.service.backend import ItemStore, ServiceIndex, Snapshots
from app.service.batcher import MicroBatcher
from app.service.decoding import Decoder
from app.service.errors import NotYetSearchable, StorageFull
from app.service.faults import NO_FAULTS, Faults
from app.service.metrics import Metrics
from app.service.ood import OodGate, Verdict
from app.service.originals import Policy, kept
from app.service.store import Item, LabelSource, NewItem, StoredAs
from app.service.uploads import Key, Prepared, Upload, _describe, prepare_uploads
from models.embed import Embedder, Embedding

log = logging.getLogger(__name__)

WRITE_THREADS = 4  # worker threads /index requests may occupy at once


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
    store: ItemStore
    index: ServiceIndex
    batcher: MicroBatcher
    snapshotter: Snapshots
    metrics: Metrics
    write_lock: AbstractContextManager[Any]
    ood: OodGate
    decoder: Decoder
    faults: Faults = NO_FAULTS
    originals: Policy = "deidentified"  # CBMIR_STORE_ORIGINALS (app.service.originals)
    # `--workers N`: apply other workers' commits first, holding the write lock, so their
    # rows met here are not mistaken for a failed add to repair (app.service.workers).
    catch_up: Callable[[], int] | None = None
    _limiter: anyio.CapacityLimiter | None = field(default=None, init=False, repr=False)

    @property
    def classes(self) -> list[str]:
        return self.embedder.class_names

    def _timed_prepare(self, uploads: list[Upload]) -> tuple[list[Prepared], list[Prepared]]:
        with self.metrics.stage.labels("decode").time():
            prepared = prepare_uploads(uploads, self.embedder, self.classes, self.decoder)
        # Items already stored need no forward pass (re-running a bulk import is cheap).
        known = self._known(prepared)
        todo = list({p.key: p for p in prepared if p.key not in known}.values())
        return prepared, todo

    def _known(self, prepared: list[Prepared]) -> dict[Key, Item]:
        """The stored items these uploads are, by key (SOP instance + frame, or bytes)."""
        by_sop = self.store.find_sop([p.dicom.key for p in prepared if p.dicom is not None])
        by_sha = self.store.find_sha([p.sha256 for p in prepared])
        known: dict[Key, Item] = {}
        for p in prepared:
            row = (by_sop.get(p.dicom.key) if p.dicom is not None else None) or by_sha.get(
                p.sha256)
            if row is not None:
                known[p.key] = row
        return known

    def stored_bytes(self, p: Prepared) -> tuple[bytes, StoredAs]:
        """What is kept of an upload as its original (see :mod:`app.service.originals`)."""
        return kept(p, self.originals)

    async def ingest(self, uploads: list[Upload]) -> list[Ingested]:
        # One worker-thread trip for decode, forward pass and commit (see Searcher.search).
        if self._limiter is None:  # made on the event loop, where anyio wants it
            self._limiter = anyio.CapacityLimiter(WRITE_THREADS)
        return await anyio.to_thread.run_sync(self.ingest_sync, uploads, limiter=self._limiter)

    def ingest_sync(self, uploads: list[Upload]) -> list[Ingested]:
        """The same steps as :meth:`ingest`, for bulk indexing and demo seeding."""
        prepared, todo = self._timed_prepare(uploads)
        # Before the write lock: de-identification costs a few ms a file.
        stored = {p.key: self.stored_bytes(p) for p in todo}
        emb = self.batcher.embed_sync(np.stack([p.array for p in todo])) if todo else None
        return self._commit(prepared, todo, emb, stored)

    def _commit(
        self, prepared: list[Prepared], todo: list[Prepared], emb: Embedding | None,
        stored: dict[Key, tuple[bytes, StoredAs]],
    ) -> list[Ingested]:
        pos = {p.key: i for i, p in enumerate(todo)}
        with self.metrics.stage.labels("ood").time():
            verdicts = self.ood.assess(emb.vectors, np.stack([p.array for p in todo])) if (
                emb is not None) else []

        def embedding_of(p: Prepared) -> tuple[np.ndarray, np.ndarray, Verdict]:
            if emb is not None and p.key in pos:
                i = pos[p.key]
                return emb.vectors[i], emb.probabilities[i], verdicts[i]
            # Stored when we looked, deleted since: embed it now (a rare race).
            one = self.batcher.embed_sync(p.array[None])
            return one.vectors[0], one.probabilities[0], self.ood.assess(
                one.vectors, p.array[None])[0]

        with self.metrics.stage.labels("commit").time(), self.write_lock:
            if self.catch_up is not None:
                self.catch_up()
            known = self._known(prepared)
            new: dict[Key, NewItem] = {}
            for n, p in enumerate(prepared):
                if p.key in known or p.key in new:
                    continue
                vector, probs, verdict = embedding_of(p)
                if not p.upload.label:
                    # A label the user gave is the user's decision and is kept, flag and all.
                    self.ood.refuse(verdict, _describe(n, p.upload.filename))
                label = p.upload.label or self.classes[int(np.argmax(probs))]
                source: LabelSource = "given" if p.upload.label else "predicted"
                data, stored_as = stored.get(p.key) or self.stored_bytes(p)
                new[p.key] = NewItem(
                    p.sha256, data, label, source,
                    p.content_type, p.format, p.metadata, vector, verdict.in_distribution,
                    p.dicom, p.upload.wado_url, stored_as,
                )
            items = list(new.values())
            keys = list(new)
            self._repair([row.id for row in known.values()])
            if items:
                try:
                    ids = self.store.insert(items)
                except StorageFull:
                    self.metrics.storage_full.inc()
                    raise
                # An id another replica committed meanwhile (same bytes or SOP instance at
                # the same moment) is that replica's row: a duplicate, already searchable.
                ours = [i for i, item_id in enumerate(ids) if item_id not in ids.existing]
                if ours:
                    self._add(np.array([ids[i] for i in ours], np.int64),
                              np.stack([items[i].vector for i in ours]),
                              [items[i].label for i in ours])
                theirs = self.store.get_many(sorted(ids.existing)) if ids.existing else {}
                for key, it, item_id in zip(keys, items, ids, strict=True):
                    known[key] = theirs.get(item_id) or Item(
                        item_id, it.sha256, it.label, it.label_source, it.content_type,
                        it.format, it.metadata, "", it.in_distribution, it.dicom, it.wado_url,
                        it.stored_as)
                keys = [k for k, item_id in zip(keys, ids, strict=True)
                        if item_id not in ids.existing]
        self.snapshotter.note_writes(len(items))
        self.metrics.ingested.inc(len(items))
        fresh = set(keys)
        out: list[Ingested] = []
        for p in prepared:
            row = known[p.key]
            out.append(Ingested(row.id, row.label, row.label_source, p.key not in fresh,
                                row.in_distribution))
            fresh.discard(p.key)  # the same item twice in one request: 2nd is a duplicate
        return out

    def _add(self, ids: np.ndarray, vectors: np.ndarray, labels: list[str]) -> None:
        """Committed rows into the index: retried once at once, then 503 (repaired later)."""
        for attempt in (1, 2):
            try:
                self.faults.hit("index_add")
                self.index.add(ids, vectors, labels)
                if attempt == 2:
                    self.metrics.index_repairs.inc(len(ids))
                return
            except Exception:
                log.exception("adding %d committed item(s) to the index failed (attempt %d)",
                              len(ids), attempt)
                # A partial add (one label's vectors in, another's not) is finished by the
                # retry: it adds only what is still missing.
                ids, vectors, labels = self._still_missing(ids, vectors, labels)
                if not len(ids):
                    return
        raise NotYetSearchable(
            f"{len(ids)} image(s) stored but not yet searchable (index update failed); "
            "retry the same request to finish it"
        )

    def _still_missing(self, ids: np.ndarray, vectors: np.ndarray, labels: list[str]
                       ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        keep = np.isin(ids, self.index.missing(ids))
        return ids[keep], vectors[keep], [lb for lb, k in zip(labels, keep, strict=True) if k]

    def _repair(self, ids: list[int]) -> None:
        """Stored rows of this request that an earlier failed add left out of the index."""
        missing = self.index.missing(ids) if ids else np.empty(0, np.int64)
        if not len(missing):
            return
        for chunk_ids, vecs, labels in self.store.vectors(self.embedder.embedding_dim, missing):
            self.index.add(chunk_ids, vecs, labels)
            self.metrics.index_repairs.inc(len(chunk_ids))
        log.warning("repaired %d stored item(s) missing from the index", len(missing))
