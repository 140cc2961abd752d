"""Searching: classify the query, pick the scope, rank the index, attach the stored rows.

Scope ``predicted`` (the paper's method) searches only the predicted class's sub-index,
``all`` every class, and an explicit ``label`` that class instead (scope ``label``). A
query out of distribution (:mod:`app.service.ood`) has no meaningful predicted class, so
scope ``predicted`` becomes ``all`` for it, with a warning.

Study- and series-aware results (:class:`SearchOptions`): ``group_by="series"`` ranks at
least :data:`CANDIDATES_PER_RESULT` x k slices and returns up to k series, each as its best
slice with ``series_hits`` (how many of its slices were among those candidates; a
non-DICOM image is a series of its own); ``exclude_study`` leaves a study's slices out
(``exclude_same_study``: the DICOM query's own study).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import faiss
import numpy as np
from starlette.concurrency import run_in_threadpool

from app.service.backend import ItemStore, ServiceIndex
from app.service.batcher import MicroBatcher
from app.service.decoding import Decoder
from app.service.errors import InvalidInput
from app.service.metrics import Metrics
from app.service.ood import UNCHECKED, OodGate, Verdict
from app.service.store import DicomFields, LabelSource
from app.service.uploads import prepare_query_dicom
from models.embed import Embedder, Embedding

Scope = Literal["predicted", "all", "label"]
CANDIDATES_PER_RESULT = 20


@dataclass(frozen=True)
class SearchOptions:
    group_by: Literal["series"] | None = None
    exclude_study: str | None = None
    exclude_same_study: bool = False

    @property
    def widens(self) -> bool:
        return self.group_by is not None or self.exclude_study is not None


NO_OPTIONS = SearchOptions()


@dataclass(frozen=True)
class Hit:
    id: int
    score: float
    label: str
    metadata: dict[str, Any]
    label_source: LabelSource
    dicom: DicomFields | None = None
    wado_url: str | None = None
    series_hits: int | None = None


def group_by_series(hits: list[Hit], k: int) -> list[Hit]:
    """Up to k series, best first, each as its best slice, counting its slices."""
    best: dict[str, Hit] = {}
    counts: dict[str, int] = {}
    for h in hits:  # best first
        key = f"series:{h.dicom.series_uid}" if h.dicom and h.dicom.series_uid else f"id:{h.id}"
        counts[key] = counts.get(key, 0) + 1
        best.setdefault(key, h)
    return [dataclasses.replace(h, series_hits=counts[key])
            for key, h in list(best.items())[:k]]


@dataclass(frozen=True)
class SearchOutcome:
    label: str
    confidence: float
    probabilities: dict[str, float]
    scope: Scope
    hits: list[Hit]
    verdict: Verdict = UNCHECKED
    warnings: list[str] = field(default_factory=list)


@dataclass
class Searcher:
    embedder: Embedder
    store: ItemStore
    index: ServiceIndex
    batcher: MicroBatcher
    metrics: Metrics
    ood: OodGate
    decoder: Decoder
    # `--workers N`: apply what other workers committed before ranking (read-your-writes
    # whichever worker answers; app.service.workers). One PRAGMA when nothing changed.
    catch_up: Callable[[], int] | None = None

    @property
    def classes(self) -> list[str]:
        return self.embedder.class_names

    def check_label(self, label: str | None) -> None:
        if label is not None and label not in self.classes:
            raise InvalidInput(f"unknown label {label!r}; known: {', '.join(self.classes)}")

    async def search(self, data: bytes, k: int, scope: Scope, label: str | None,
                     options: SearchOptions = NO_OPTIONS) -> SearchOutcome:
        self.check_label(label)
        # One trip to a worker thread for the whole request: decode, wait there for the
        # batched forward pass, rank. Each hop back to the event loop in between costs a
        # wake-up and a turn on the GIL (bench/RESULTS.md: six hops per request before).
        return await run_in_threadpool(self.search_sync, data, k, scope, label, options)

    def search_sync(self, data: bytes, k: int, scope: Scope, label: str | None,
                    options: SearchOptions = NO_OPTIONS) -> SearchOutcome:
        with self.metrics.stage.labels("decode").time():
            query, dicom = prepare_query_dicom(data, self.embedder, self.decoder)
        notes: list[str] = []
        if options.exclude_same_study:
            if dicom is not None and dicom.study_uid:
                options = dataclasses.replace(options, exclude_study=dicom.study_uid)
            else:
                notes.append("exclude_same_study ignored: the query is not a DICOM file "
                             "with a Study Instance UID")
        emb = self.batcher.embed_sync(query[None])
        out = self.rank(emb, k, scope, label, query[None], options)
        return dataclasses.replace(out, warnings=[*out.warnings, *notes]) if notes else out

    def rank(self, emb: Embedding, k: int, scope: Scope, label: str | None,
             images: np.ndarray, options: SearchOptions = NO_OPTIONS) -> SearchOutcome:
        """What a search does after the model: the OOD verdict, the scope's sub-indexes,
        then the rows. ``images`` is the ``uint8`` model input the embedding came from."""
        with self.metrics.stage.labels("ood").time():
            verdict = self.ood.assess(emb.vectors, images)[0]
        self.ood.refuse(verdict, "query")
        probs = emb.probabilities[0]
        best = int(np.argmax(probs))
        predicted = self.classes[best]
        labels: list[str] | None = None
        widened = False
        if label is not None:
            scope, labels = "label", [label]
        elif scope == "predicted" and verdict.out:
            scope, widened = "all", True
        elif scope == "predicted":
            labels = [predicted]
        # One query per request: the service parallelises across requests, and an OpenMP
        # team per single-query search only adds thread coordination (several ms on a
        # busy 2-core machine). The setting is per calling thread, so bulk work elsewhere
        # (index rebuilds) keeps its threads.
        faiss.omp_set_num_threads(1)
        n = max(k, CANDIDATES_PER_RESULT * k) if options.widens else k
        if self.catch_up is not None:
            self.catch_up()
        with self.metrics.stage.labels("search").time():
            res = self.index.search(emb.vectors, n, labels)
        ids = [int(i) for i in res.ids[0] if i >= 0]
        rows = self.store.get_many(ids)
        hits = [
            Hit(i, float(s), rows[i].label, rows[i].metadata, rows[i].label_source,
                rows[i].dicom, rows[i].wado_url)
            for i, s in zip(res.ids[0], res.scores[0], strict=True)
            if i >= 0 and int(i) in rows  # a row deleted since the search is skipped
        ]
        if options.exclude_study is not None:
            hits = [h for h in hits if h.dicom is None
                    or h.dicom.study_uid != options.exclude_study]
        hits = group_by_series(hits, k) if options.group_by == "series" else hits[:k]
        return SearchOutcome(
            predicted, float(probs[best]),
            {c: float(p) for c, p in zip(self.classes, probs, strict=True)}, scope, hits,
            verdict, self.ood.warnings(verdict, widened),
        )
