"""The evaluation protocol behind ``cbmir evaluate``: classification and retrieval figures.

Gallery = train split, queries = test split. Every query is classified and ranked twice:
against the whole gallery (scope ``all``) and against the gallery images of its
predicted class only (scope ``predicted``, the method of Qayyum et al. 2017). Relevant =
same true class. The figures go to ``report.json``, ``report.md`` and two PNGs, written by
:mod:`models.training.report`.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from models.arch import flops_per_image
from models.config import ModelConfig
from models.embed import Embedder, Embedding
from models.training.dataset import DatasetError, Prepared, Record, load_prepared, scan_dataset
from models.training.metrics import (
    RetrievalScores,
    accuracy,
    confusion_matrix,
    macro_f1,
    per_class_metrics,
    retrieval_scores,
)
from models.training.report import KS, PAPER, PROTOCOL, write_report

log = logging.getLogger(__name__)

SEARCH_K = 100
SCOPES = ("all", "predicted")
# Search timing uses at most this many queries: the per-query cost of a flat index does
# not depend on how many are timed, and all 5,900 MedNIST queries × 3 repeats would
# double the run time on a small CPU.
TIMED_QUERIES = 1000
TIMING_REPEATS = 3
SUBSET_SEED = 0

def _subsample(records: list[Record], max_queries: int | None) -> list[Record]:
    """A seeded subset in the original order, so reruns evaluate the same queries."""
    if max_queries is None or max_queries >= len(records):
        return records
    if max_queries < 1:
        raise DatasetError(f"max_queries must be at least 1, got {max_queries}")
    keep = np.random.default_rng(SUBSET_SEED).choice(len(records), max_queries, replace=False)
    return [records[i] for i in np.sort(keep)]


def _known_only(prep: Prepared, what: str) -> tuple[Prepared, int]:
    """Drop images whose label is not a class of the model: they can be neither relevant
    nor correctly classified, so counting them would only blur the figures."""
    known = prep.labels >= 0
    dropped = int((~known).sum())
    if dropped:
        log.warning("%d %s images have a label the model does not know; left out", dropped, what)
        prep = Prepared(prep.images[known], prep.labels[known], prep.failed)
    return prep, dropped


def _embed(embedder: Embedder, images: np.ndarray, desc: str, progress: bool,
           batch_size: int = 256) -> tuple[Embedding, float]:
    """Embeddings and the seconds spent in the model alone (decoding is timed apart)."""
    vecs, probs = [], []
    seconds = 0.0
    # One small untimed batch first: the first call pays for kernel selection and
    # thread-pool start-up, which is no part of steady-state throughput.
    embedder.embed_prepared(images[:8])
    for start in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress,
                      unit="batch", mininterval=1.0):
        t0 = time.perf_counter()
        e = embedder.embed_prepared(images[start : start + batch_size], batch_size=batch_size)
        seconds += time.perf_counter() - t0
        vecs.append(e.vectors)
        probs.append(e.probabilities)
    return Embedding(np.concatenate(vecs), np.concatenate(probs)), seconds


def _classification(y_true: np.ndarray, y_pred: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    cm = confusion_matrix(y_true, y_pred, len(names))
    pc = per_class_metrics(cm)
    return {
        "accuracy": accuracy(y_true, y_pred),
        "macro_f1": macro_f1(y_true, y_pred, len(names)),
        "misclassified": int((y_true != y_pred).sum()),
        "per_class": {
            name: {
                "precision": float(pc.precision[i]),
                "recall": float(pc.recall[i]),
                "f1": float(pc.f1[i]),
                "support": int(pc.support[i]),
            }
            for i, name in enumerate(names)
        },
        "confusion_matrix": cm.tolist(),
    }


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _faiss_timing(
    cfg: ModelConfig,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    queries: np.ndarray,
    predicted: np.ndarray,
    all_top: np.ndarray,
) -> tuple[dict[str, float], float]:
    """Per-query search time in a real flat :class:`FaissIndex` for each scope, and the
    share of timed queries whose FAISS top-10 equals the numpy ranking's (a cross-check
    that the metrics rank like the service does)."""
    from index import FaissIndex

    names = cfg.class_names
    index = FaissIndex(cfg.embedding_dim, model_fingerprint=cfg.fingerprint, index_type="flat")
    index.add(np.arange(len(gallery), dtype=np.int64), gallery, [names[i] for i in gallery_labels])
    n = min(len(queries), TIMED_QUERIES)
    rows = np.sort(np.random.default_rng(SUBSET_SEED).choice(len(queries), n, replace=False))
    q, pred = queries[rows], predicted[rows]
    groups = [(names[c], np.flatnonzero(pred == c)) for c in np.unique(pred)]

    def search_predicted() -> None:
        # Batched per predicted class: the service restricts each query to its class.
        for name, members in groups:
            index.search(q[members], SEARCH_K, labels=[name])

    index.search(q[:8], SEARCH_K)  # warm-up: FAISS starts its OpenMP threads on first use
    ms = {
        "all": _median_seconds(lambda: index.search(q, SEARCH_K), TIMING_REPEATS) * 1e3 / n,
        "predicted": _median_seconds(search_predicted, TIMING_REPEATS) * 1e3 / n,
    }
    top = index.search(q, 10).ids
    agree = np.mean([set(a) == set(b) for a, b in zip(top, all_top[rows, :10], strict=True)])
    return ms, float(agree)


def _retrieval(scores: dict[str, RetrievalScores], y_true: np.ndarray, y_pred: np.ndarray
               ) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for scope in SCOPES:
        s = scores[scope]
        out[scope] = {
            **s.summary(),
            "mean_ranking_length": float(s.ranking_length.mean()),
            "queries_with_no_relevant_retrieved": int((s.ap == 0).sum()),
        }
    out["predicted"]["misclassified_queries"] = int((y_true != y_pred).sum())
    return out


def run_evaluation(
    model_dir: Path,
    data_dir: Path,
    split_csv: Path | None,
    out_dir: Path,
    *,
    device: str = "auto",
    max_queries: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a model on a data set's test split and write the report into ``out_dir``.

    Returns the report (the content of ``report.json``).
    """
    embedder = Embedder.load(model_dir, device=device)
    cfg = embedder.config
    ds = scan_dataset(Path(data_dir), split_csv)
    gallery_recs, query_recs = ds.split("train"), _subsample(ds.split("test"), max_queries)
    if not query_recs:
        raise DatasetError(f"no images in the test split of {data_dir}: nothing to query with")
    log.info("evaluating on %d queries against %d gallery images", len(query_recs),
             len(gallery_recs))

    t0 = time.perf_counter()
    gal = load_prepared(gallery_recs, cfg, desc="decode gallery", progress=progress)
    qry = load_prepared(query_recs, cfg, desc="decode queries", progress=progress)
    decode_s = time.perf_counter() - t0
    gal, gal_unknown = _known_only(gal, "gallery")
    qry, qry_unknown = _known_only(qry, "query")
    if not len(gal.labels) or not len(qry.labels):
        raise DatasetError("no readable gallery or query image of a class the model knows")

    g_emb, g_s = _embed(embedder, gal.images, "embed gallery", progress)
    q_emb, q_s = _embed(embedder, qry.images, "embed queries", progress)
    y_true, y_pred = qry.labels, q_emb.probabilities.argmax(axis=1).astype(np.int64)

    t0 = time.perf_counter()
    scores = retrieval_scores(q_emb.vectors, g_emb.vectors, y_true, gal.labels,
                              {"all": None, "predicted": y_pred}, ks=KS)
    metrics_s = time.perf_counter() - t0
    search_ms, agreement = _faiss_timing(cfg, g_emb.vectors, gal.labels, q_emb.vectors, y_pred,
                                         scores["all"].top_ids)
    if agreement < 0.99:
        log.warning("FAISS and the numpy ranking agree on the top-10 of only %.1f%% of queries",
                    100 * agreement)

    n_embedded = len(gal.labels) + len(qry.labels)
    report: dict[str, Any] = {
        "model": {
            "name": cfg.name,
            "fingerprint": cfg.fingerprint,
            "embedding_dim": cfg.embedding_dim,
            "flops_per_image": flops_per_image(cfg),
            "classes": list(cfg.class_names),
        },
        "data": {
            "root": str(data_dir),
            "split_csv": str(split_csv) if split_csv else None,
            "gallery": len(gal.labels),
            "queries": len(qry.labels),
            "classes": cfg.num_classes,
            "fingerprint": ds.fingerprint,
            "skipped": ds.skipped,
            "unreadable": gal.failed + qry.failed,
            "unknown_label": gal_unknown + qry_unknown,
            "max_queries": max_queries,
        },
        "classification": _classification(y_true, y_pred, cfg.class_names),
        "retrieval": _retrieval(scores, y_true, y_pred),
        "timing": {
            "device": str(embedder.device),
            "decode_s": round(decode_s, 3),
            "embed_s": round(g_s + q_s, 3),
            "embed_images_per_s": n_embedded / max(g_s + q_s, 1e-9),
            "metrics_s": round(metrics_s, 3),
            "search_ms_per_query": search_ms,
            "search_k": SEARCH_K,
            "search_note": "flat FaissIndex, batched search of up to "
            f"{TIMED_QUERIES} queries (per predicted class for 'predicted'), median of "
            f"{TIMING_REPEATS} runs, divided by the number of queries",
        },
        "checks": {"faiss_top10_agreement": agreement},
        "protocol": PROTOCOL,
        "paper": PAPER,
    }
    write_report(report, scores, out_dir)
    return report
