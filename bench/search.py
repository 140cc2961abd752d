"""Index search time per query by gallery size: exact flat vs approximate (IVF, HNSW),
scope ``all`` vs ``predicted``, recall@k of the approximate index against exact."""

from __future__ import annotations

import gc
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from bench.common import median, percentile, thread_limit
from bench.vectors import VectorSource, make_gallery
from index import FaissIndex

log = logging.getLogger(__name__)

Kind = Literal["flat", "ivf", "hnsw"]
SCOPES = ("all", "predicted")


def build_index(kind: Kind, ids: np.ndarray, vecs: np.ndarray, labels: np.ndarray,
                approx_min_size: int, fingerprint: str) -> tuple[FaissIndex, float]:
    """Build through the public API, one ``add`` per label (the batch path a bulk import
    takes); an approximate sub-index is trained and filled inside that ``add``."""
    index = FaissIndex(vecs.shape[1], model_fingerprint=fingerprint, index_type=kind,
                       approx_min_size=approx_min_size)
    t0 = time.perf_counter()
    for label in np.unique(labels).tolist():
        rows = np.flatnonzero(labels == label)
        index.add(ids[rows], vecs[rows], str(label))
    return index, time.perf_counter() - t0


def _scoped(queries: np.ndarray, preds: list[str], scope: str
            ) -> list[tuple[np.ndarray, list[str] | None, np.ndarray]]:
    """(query rows, labels, positions) groups: one group for ``all``, one per class else."""
    if scope == "all":
        return [(queries, None, np.arange(len(queries)))]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(preds):
        groups[p].append(i)
    return [(queries[rows], [label], np.array(rows)) for label, rows in groups.items()]


def batched_ids(index: FaissIndex, queries: np.ndarray, preds: list[str], scope: str,
                k: int) -> np.ndarray:
    out = np.empty((len(queries), k), np.int64)
    for q, labels, pos in _scoped(queries, preds, scope):
        out[pos] = index.search(q, k, labels).ids
    return out


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    hits = [len(set(a[a >= 0].tolist()) & set(e[e >= 0].tolist())) / max(1, int((e >= 0).sum()))
            for a, e in zip(approx, exact, strict=True)]
    return float(np.mean(hits))


def time_single(index: FaissIndex, queries: np.ndarray, preds: list[str], scope: str, k: int,
                repeats: int, max_s: float) -> dict[str, float]:
    """q=1 per call, as the service searches: median over repeats of the mean ms/query."""
    index.search(queries[:1], k, None if scope == "all" else [preds[0]])  # warm-up
    means: list[float] = []
    calls: list[float] = []
    deadline = time.perf_counter() + max_s
    for _ in range(repeats):
        done = 0
        t_rep = time.perf_counter()
        for i in range(len(queries)):
            t0 = time.perf_counter()
            index.search(queries[i : i + 1], k, None if scope == "all" else [preds[i]])
            calls.append(time.perf_counter() - t0)
            done += 1
            if time.perf_counter() > deadline:
                break
        means.append((time.perf_counter() - t_rep) / done)
        if time.perf_counter() > deadline:
            break
    return {"ms_per_query": 1e3 * median(means), "p50_ms": 1e3 * percentile(calls, 50),
            "p99_ms": 1e3 * percentile(calls, 99), "calls": len(calls)}


def time_batched(index: FaissIndex, queries: np.ndarray, preds: list[str], scope: str, k: int,
                 repeats: int, max_s: float) -> float:
    """ms per query when all queries go in one call (one per class for ``predicted``).
    No warm-up: the recall computation just ran the same calls."""
    times: list[float] = []
    deadline = time.perf_counter() + max_s
    for _ in range(repeats):
        t0 = time.perf_counter()
        batched_ids(index, queries, preds, scope, k)
        times.append(time.perf_counter() - t0)
        if time.perf_counter() > deadline:
            break
    return 1e3 * median(times) / len(queries)


def bench_size(src: VectorSource, n: int, kinds: list[Kind], k: int, repeats: int,
               approx_min_size: int, fingerprint: str, max_s: float, timed_queries: int = 100
               ) -> tuple[dict[str, Any], dict[str, FaissIndex], dict[str, np.ndarray]]:
    t0 = time.perf_counter()
    ids, vecs, labels = make_gallery(src, n)
    log.info("search n=%d: gallery generated in %.1fs", n, time.perf_counter() - t0)
    queries, preds = src.queries, src.query_labels
    out: dict[str, Any] = {"n": n, "queries": len(queries), "k": k, "by_kind": {}}
    indexes: dict[str, FaissIndex] = {}
    exact: dict[str, np.ndarray] = {}
    for kind in kinds:
        index, build_s = build_index(kind, ids, vecs, labels, approx_min_size, fingerprint)
        indexes[kind] = index
        sub_kinds = sorted({d["kind"] for d in index.describe().values()})
        row: dict[str, Any] = {"build_s": build_s, "sub_index_kinds": sub_kinds}
        for scope in SCOPES:
            got = batched_ids(index, queries, preds, scope, k)  # all queries: for recall
            if kind == "flat":
                exact[scope] = got
            # Timed on the first ``timed_queries``: bounded time at 1M on a flat index.
            tq, tp = queries[:timed_queries], preds[:timed_queries]
            single = time_single(index, tq, tp, scope, k, repeats, max_s)
            # FAISS forks OpenMP threads even for one query (IndexIDMap's id translation);
            # on a busy machine that fork/join dominates: measure with one thread beside it.
            with thread_limit(faiss_threads=1):
                one = time_single(index, tq, tp, scope, k, repeats, max_s)
            row[scope] = {
                **single,
                "ms_per_query_1thread": one["ms_per_query"],
                "batched_ms_per_query": time_batched(index, tq, tp, scope, k, repeats, max_s),
                "recall_at_k": 1.0 if kind == "flat" else recall_at_k(got, exact[scope]),
            }
        a, p = row["all"], row["predicted"]
        log.info("search n=%d %-4s build %.1fs | all %.3f ms/q (1 thread %.3f, R@%d %.3f) | "
                 "predicted %.3f ms/q (1 thread %.3f, R@%d %.3f)", n, kind, build_s,
                 a["ms_per_query"], a["ms_per_query_1thread"], k, a["recall_at_k"],
                 p["ms_per_query"], p["ms_per_query_1thread"], k, p["recall_at_k"])
        out["by_kind"][kind] = row
    return out, indexes, exact


@dataclass
class Kept:
    """The approximate index of one size and its exact answers, for the scale section."""

    index: FaissIndex
    exact: dict[str, np.ndarray]  # scope -> (Q, k) ids from the flat index


def bench_search(src: VectorSource, sizes: list[int], hnsw_max: int, k: int, repeats: int,
                 approx_min_size: int, fingerprint: str, max_s: float = 3.0,
                 keep: int | None = None) -> tuple[dict[str, Any], Kept | None]:
    """Returns the results and, if ``keep`` is one of ``sizes``, that size's IVF index."""
    results = []
    kept: Kept | None = None
    for n in sizes:
        kinds: list[Kind] = ["flat", "ivf"]
        if n <= hnsw_max:  # HNSW builds take ~5 min at 1M on 2 cores: smaller sizes only
            kinds.append("hnsw")
        res, indexes, exact = bench_size(src, n, kinds, k, repeats, approx_min_size,
                                         fingerprint, max_s)
        results.append(res)
        if n == keep:
            kept = Kept(indexes["ivf"], exact)
        del indexes
        gc.collect()
    return {"vectors": src.describe(), "approx_min_size": approx_min_size,
            "hnsw_max_size": hnsw_max, "by_size": results}, kept
