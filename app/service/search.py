"""Searching: classify the query, pick the scope, rank the index, attach the stored rows.

Scope ``predicted`` (the paper's method) searches only the predicted class's sub-index,
``all`` every class, and an explicit ``label`` that class instead (scope ``label``). A
query out of distribution (:mod:`app.service.ood`) has no meaningful predicted class, so
scope ``predicted`` becomes ``all`` for it, with a warning.
"""

from __future__ import annotations

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
from app.service.store import LabelSource
from app.service.uploads import prepare_query
from models.embed import Embedder, Embedding

Scope = Literal["predicted", "all", "label"]


@dataclass(frozen=True)
class Hit:
    id: int
    score: float
    label: str
    metadata: dict[str, Any]
    label_source: LabelSource


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

    @property
    def classes(self) -> list[str]:
        return self.embedder.class_names

    def check_label(self, label: str | None) -> None:
        if label is not None and label not in self.classes:
            raise InvalidInput(f"unknown label {label!r}; known: {', '.join(self.classes)}")

    async def search(self, data: bytes, k: int, scope: Scope, label: str | None) -> SearchOutcome:
        self.check_label(label)
        # One trip to a worker thread for the whole request: decode, wait there for the
        # batched forward pass, rank. Each hop back to the event loop in between costs a
        # wake-up and a turn on the GIL (bench/RESULTS.md: six hops per request before).
        return await run_in_threadpool(self.search_sync, data, k, scope, label)

    def search_sync(self, data: bytes, k: int, scope: Scope, label: str | None
                    ) -> SearchOutcome:
        with self.metrics.stage.labels("decode").time():
            query = prepare_query(data, self.embedder, self.decoder)
        emb = self.batcher.embed_sync(query[None])
        return self.rank(emb, k, scope, label, query[None])

    def rank(self, emb: Embedding, k: int, scope: Scope, label: str | None,
             images: np.ndarray) -> SearchOutcome:
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
        with self.metrics.stage.labels("search").time():
            res = self.index.search(emb.vectors, k, labels)
        ids = [int(i) for i in res.ids[0] if i >= 0]
        rows = self.store.get_many(ids)
        hits = [
            Hit(i, float(s), rows[i].label, rows[i].metadata, rows[i].label_source)
            for i, s in zip(res.ids[0], res.scores[0], strict=True)
            if i >= 0 and int(i) in rows  # a row deleted since the search is skipped
        ]
        return SearchOutcome(
            predicted, float(probs[best]),
            {c: float(p) for c, p in zip(self.classes, probs, strict=True)}, scope, hits,
            verdict, self.ood.warnings(verdict, widened),
        )
