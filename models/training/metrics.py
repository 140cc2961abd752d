"""Classification and retrieval metrics: small pure functions plus one vectorised batch path.

Conventions (the evaluation report quotes them):

* A *ranking* is a boolean array in rank order, ``True`` where the item at that rank is
  relevant to the query. Rank ``i`` is 1-based in the formulas below.
* Full-ranking AP: ``(1/R) * sum over relevant ranks i of P@i``, where ``R`` counts every
  relevant item of the gallery, so relevant items the ranking never reaches (for example
  ones excluded by a class restriction) contribute 0.
* Truncated AP@k: ``sum over relevant ranks i <= k of P@i / min(R, k)``, so a perfect
  top-k scores 1 even when ``R > k``.
* ``R == 0`` gives AP 0.0 rather than NaN, so a report never holds a non-number.

:func:`retrieval_scores` computes the same quantities for a whole query batch against a
gallery without materialising a queries × gallery matrix: queries are processed in
chunks, ranked by exact inner product (the order of a flat FAISS inner-product index)
with ties broken by gallery position, and AP comes from the positions of the hits only.

Longer than the ~300 lines a module here usually keeps to, on purpose: the per-query
functions are the definitions the batch path is tested against (tests/test_metrics.py),
and one set of conventions is easier to trust when both forms sit side by side.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: The recall levels of the interpolated precision–recall curve (0, 0.01, ..., 1).
RECALL_LEVELS: np.ndarray = np.linspace(0.0, 1.0, 101)

# ``ceil(t * R)`` on floats: 0.07 * 100 is 7.000000000000001, which must stay 7.
_CEIL_EPS = 1e-9


# --------------------------------------------------------------------------- ranking metrics


def _ranking(relevant: np.ndarray | Sequence[bool]) -> np.ndarray:
    rel = np.asarray(relevant, dtype=bool)
    if rel.ndim != 1:
        raise ValueError(f"a ranking must be one-dimensional, got shape {rel.shape}")
    return rel


def precision_at_k(relevant: np.ndarray | Sequence[bool], k: int) -> float:
    """Fraction of the top ``k`` ranks that are relevant.

    Divides by ``k`` even when the ranking is shorter than ``k`` (a restricted gallery
    with fewer than ``k`` items): the missing ranks count as misses, as a user asking
    for ``k`` results would see them.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return float(np.count_nonzero(_ranking(relevant)[:k])) / k


def average_precision(
    relevant: np.ndarray | Sequence[bool], n_relevant: int, k: int | None = None
) -> float:
    """Full-ranking AP (``k=None``) or truncated AP@k of one ranking; see the module doc."""
    rel = _ranking(relevant)
    if k is not None:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        rel = rel[:k]
    if n_relevant <= 0:
        return 0.0
    hits = np.flatnonzero(rel)
    if len(hits) > n_relevant:
        raise ValueError(f"ranking holds {len(hits)} relevant items but n_relevant={n_relevant}")
    precisions = np.arange(1, len(hits) + 1) / (hits + 1)
    denom = n_relevant if k is None else min(n_relevant, k)
    return float(precisions.sum() / denom)


def mean_average_precision(
    rankings: Sequence[np.ndarray | Sequence[bool]],
    n_relevant: Sequence[int] | np.ndarray,
    k: int | None = None,
) -> float:
    """Mean over queries of :func:`average_precision` (AP@k when ``k`` is given)."""
    if len(rankings) != len(n_relevant):
        raise ValueError("one n_relevant per ranking is needed")
    if not len(rankings):
        raise ValueError("mean average precision of no queries is undefined")
    pairs = zip(rankings, n_relevant, strict=True)
    return float(np.mean([average_precision(r, int(n), k) for r, n in pairs]))


def interpolated_precision(
    relevant: np.ndarray | Sequence[bool],
    n_relevant: int,
    levels: np.ndarray = RECALL_LEVELS,
) -> np.ndarray:
    """Interpolated precision of one ranking at each recall level (TREC style).

    ``P_interp(t) = max precision over the ranks whose recall is >= t``; 0 where the
    ranking never reaches recall ``t`` (so a query whose ranking holds no relevant item is
    0 everywhere — the misclassified queries of the class-restricted scope).
    """
    out = np.zeros(len(levels), dtype=np.float64)
    if n_relevant <= 0:
        return out
    hits = np.flatnonzero(_ranking(relevant))
    if not len(hits):
        return out
    prec = np.arange(1, len(hits) + 1) / (hits + 1)
    # Best precision at or after the j-th hit; the maximum over ranks of recall >= t is
    # attained at a hit, since precision only falls between hits.
    best_from = np.maximum.accumulate(prec[::-1])[::-1]
    need = np.maximum(np.ceil(np.asarray(levels) * n_relevant - _CEIL_EPS), 1).astype(np.int64)
    ok = need <= len(hits)
    out[ok] = best_from[need[ok] - 1]
    return out


def precision_recall_curve(
    rankings: Sequence[np.ndarray | Sequence[bool]],
    n_relevant: Sequence[int] | np.ndarray,
    levels: np.ndarray = RECALL_LEVELS,
) -> tuple[np.ndarray, np.ndarray]:
    """(recall levels, mean interpolated precision over queries) — points for a plot.

    Averaged per query (each query weighs the same), the usual retrieval convention;
    :attr:`RetrievalScores.interp_precision` holds the same per-query values.
    """
    if not len(rankings):
        raise ValueError("a precision-recall curve of no queries is undefined")
    pairs = zip(rankings, n_relevant, strict=True)
    per_query = np.stack([interpolated_precision(r, int(n), levels) for r, n in pairs])
    return np.asarray(levels, dtype=np.float64), per_query.mean(axis=0)


# ---------------------------------------------------------------------- classification


def _labels(y: np.ndarray | Sequence[int]) -> np.ndarray:
    arr = np.asarray(y, dtype=np.int64)
    if arr.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {arr.shape}")
    return arr


def accuracy(y_true: np.ndarray | Sequence[int], y_pred: np.ndarray | Sequence[int]) -> float:
    t, p = _labels(y_true), _labels(y_pred)
    if t.shape != p.shape:
        raise ValueError("y_true and y_pred differ in length")
    if not len(t):
        raise ValueError("accuracy of no samples is undefined")
    return float(np.mean(t == p))


def confusion_matrix(
    y_true: np.ndarray | Sequence[int], y_pred: np.ndarray | Sequence[int], n_classes: int
) -> np.ndarray:
    """``cm[i, j]`` = number of samples of true class ``i`` predicted as ``j`` (int64)."""
    t, p = _labels(y_true), _labels(y_pred)
    if t.shape != p.shape:
        raise ValueError("y_true and y_pred differ in length")
    if len(t) and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes})")
    counts = np.bincount(t * n_classes + p, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes).astype(np.int64)


@dataclass(frozen=True)
class PerClass:
    """Per-class precision, recall, F1 (0 where undefined, as scikit-learn) and support."""

    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def per_class_metrics(cm: np.ndarray) -> PerClass:
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    support = cm.sum(axis=1)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support.astype(np.float64))
    f1 = _safe_div(2 * precision * recall, precision + recall)
    return PerClass(precision, recall, f1, support.astype(np.int64))


def macro_f1(
    y_true: np.ndarray | Sequence[int], y_pred: np.ndarray | Sequence[int], n_classes: int
) -> float:
    """Unweighted mean F1 over the classes that occur in ``y_true`` or ``y_pred``.

    Classes absent from both are left out (scikit-learn's default label set), so a model
    with more classes than the test split holds is not penalised for the missing ones.
    """
    cm = confusion_matrix(y_true, y_pred, n_classes)
    present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    if not present.any():
        raise ValueError("macro F1 of no samples is undefined")
    return float(per_class_metrics(cm).f1[present].mean())


# ------------------------------------------------------------- vectorised batch retrieval


def stable_descending_order(scores: np.ndarray) -> np.ndarray:
    """Row-wise argsort of float32 ``scores`` by descending value, ties by ascending column.

    Equal to ``np.argsort(-scores, axis=1, kind="stable")`` but several times faster; see
    :func:`_descending_order_inplace`. Assumes finite scores.
    """
    if scores.ndim != 2:
        raise ValueError("scores must be two-dimensional")
    return _descending_order_inplace(np.array(scores, dtype=np.float32, order="C"))


def _descending_order_inplace(scores: np.ndarray) -> np.ndarray:
    """Stable descending argsort of a C-contiguous float32 (rows, n) array it overwrites.

    The negated float bits become an order-preserving int32 (flip the magnitude bits of
    negative values), shifted above the column index into one int64: the keys are unique,
    so numpy's fast SIMD sort (not stable by itself) yields a stable argsort.
    """
    n = scores.shape[1]
    if n >= 1 << 31:
        raise ValueError("galleries of 2**31 items or more are not supported")
    np.negative(scores, out=scores)
    scores += np.float32(0.0)  # -0.0 and 0.0 compare equal but differ in bits: fold them
    bits = scores.view(np.int32)
    bits ^= (bits >> 31) & np.int32(0x7FFFFFFF)
    keys = bits.astype(np.int64)
    keys <<= 32
    keys |= np.arange(n, dtype=np.int64)
    keys.sort(axis=1)
    keys &= np.int64(0xFFFFFFFF)
    return keys


@dataclass(frozen=True)
class RetrievalScores:
    """Per-query retrieval results of one scope (all arrays have one row per query).

    ``top_ids``/``top_relevant`` are the first ``max(ks)`` items of the query's ranking
    (gallery positions, -1 and ``False`` past its end); ``ap`` is full-ranking AP;
    ``ap_at``/``precision_at`` map each k to per-query values; ``interp_precision`` is
    (queries, len(RECALL_LEVELS)); ``ranking_length`` is the size of the searched gallery.
    """

    ap: np.ndarray
    ap_at: dict[int, np.ndarray]
    precision_at: dict[int, np.ndarray]
    interp_precision: np.ndarray
    top_ids: np.ndarray
    top_relevant: np.ndarray
    n_relevant: np.ndarray
    ranking_length: np.ndarray

    def summary(self) -> dict[str, float]:
        """Means over queries: ``map``, ``map_at_<k>``, ``precision_at_<k>``."""
        out = {"map": float(self.ap.mean())}
        out.update({f"map_at_{k}": float(v.mean()) for k, v in self.ap_at.items()})
        out.update({f"precision_at_{k}": float(v.mean()) for k, v in self.precision_at.items()})
        return out

    def pr_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """Same points as :func:`precision_recall_curve` over these queries."""
        return RECALL_LEVELS.copy(), self.interp_precision.mean(axis=0)


@dataclass
class _Accumulator:
    n: int
    ks: tuple[int, ...]

    def __post_init__(self) -> None:
        kmax = max(self.ks)
        self.ap = np.zeros(self.n)
        self.ap_at = {k: np.zeros(self.n) for k in self.ks}
        self.p_at = {k: np.zeros(self.n) for k in self.ks}
        self.interp = np.zeros((self.n, len(RECALL_LEVELS)))
        self.top_ids = np.full((self.n, kmax), -1, dtype=np.int64)
        self.top_rel = np.zeros((self.n, kmax), dtype=bool)
        self.n_rel = np.zeros(self.n, dtype=np.int64)
        self.length = np.zeros(self.n, dtype=np.int64)

    def result(self) -> RetrievalScores:
        return RetrievalScores(
            self.ap, self.ap_at, self.p_at, self.interp, self.top_ids, self.top_rel,
            self.n_rel, self.length,
        )


def _top_positions(rank: np.ndarray, kmax: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, column, slot) of the first ``kmax`` in-scope items of each row.

    ``rank`` is the running count of in-scope items, non-decreasing along a row, so the
    j-th in-scope item is the first column where it reaches j: a per-row binary search,
    far cheaper than another pass over the whole (chunk, gallery) block.
    """
    wanted = np.arange(1, kmax + 1)
    rows, cols, slots = [], [], []
    for i, row in enumerate(rank):
        pos = np.searchsorted(row, wanted[: int(row[-1])], side="left")
        rows.append(np.full(len(pos), i))
        cols.append(pos)
        slots.append(np.arange(len(pos)))
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(slots)


def _score_chunk(
    acc: _Accumulator,
    sl: slice,
    order: np.ndarray,
    relevant: np.ndarray,
    in_scope: np.ndarray | None,
    n_rel: np.ndarray,
) -> None:
    """Fill ``acc[sl]`` from one chunk's full ranking ``order`` (c, G) and its relevance."""
    c, g = order.shape
    kmax = max(acc.ks)
    rank: np.ndarray | None = None  # None: the rank in the scope is the position + 1
    if in_scope is None:
        length = np.full(c, g, dtype=np.int64)
        width = min(kmax, g)
        top_rows = np.repeat(np.arange(c), width)
        top_cols = np.tile(np.arange(width), c)
        slot = top_cols
    else:
        # The restricted ranking is the full ranking with out-of-scope items removed, so
        # one sort serves every scope: an item's rank is the count of in-scope items up to it.
        rank = np.cumsum(in_scope, axis=1, dtype=np.int32)
        length = rank[:, -1].astype(np.int64)
        relevant = relevant & in_scope
        top_rows, top_cols, slot = _top_positions(rank, kmax)

    ids = np.full((c, kmax), -1, dtype=np.int64)
    rel_top = np.zeros((c, kmax), dtype=bool)
    ids[top_rows, slot] = order[top_rows, top_cols]
    rel_top[top_rows, slot] = relevant[top_rows, top_cols]
    acc.top_ids[sl] = ids
    acc.top_rel[sl] = rel_top

    # P@k and AP@k straight from the top block (see precision_at_k / average_precision).
    hits_so_far = np.cumsum(rel_top, axis=1)
    prec_top = np.where(rel_top, hits_so_far / np.arange(1, kmax + 1), 0.0)
    csum_prec = np.cumsum(prec_top, axis=1)
    for k in acc.ks:
        acc.p_at[k][sl] = hits_so_far[:, k - 1] / k
        acc.ap_at[k][sl] = _safe_div(csum_prec[:, k - 1], np.minimum(n_rel, k).astype(np.float64))

    # Full-ranking AP from the hit positions only: the j-th hit at rank r adds j / r.
    # (flatnonzero + divmod is several times faster than a 2-D nonzero.)
    flat = np.flatnonzero(relevant)
    rows, cols = np.divmod(flat, g)
    bounds = np.searchsorted(flat, np.arange(c + 1) * g)  # each row's run of hits
    starts, counts = bounds[:-1], np.diff(bounds)
    j = np.arange(1, len(flat) + 1) - np.repeat(starts, counts)
    r = cols + 1 if rank is None else rank.ravel()[flat]
    prec = j / r
    acc.ap[sl] = _safe_div(np.bincount(rows, weights=prec, minlength=c), n_rel.astype(np.float64))

    # Interpolated precision: a segmented suffix maximum of ``prec`` per row. Offsetting
    # each row by 2 * (its position counted from the end) keeps the running maximum,
    # taken from the end, from leaking into an earlier row (precision lies in [0, 1]).
    if len(rows):
        offset = 2.0 * (c - 1 - rows)
        best_from = np.maximum.accumulate((prec + offset)[::-1])[::-1] - offset
        need = np.ceil(RECALL_LEVELS[None, :] * n_rel[:, None] - _CEIL_EPS)
        need = np.maximum(need, 1).astype(np.int64)
        ok = (need <= counts[:, None]) & (n_rel[:, None] > 0)
        idx = np.where(ok, starts[:, None] + need - 1, 0)
        acc.interp[sl] = np.where(ok, best_from[idx], 0.0)
    acc.n_rel[sl] = n_rel
    acc.length[sl] = length


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def retrieval_scores(
    queries: np.ndarray,
    gallery: np.ndarray,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    scopes: Mapping[str, np.ndarray | None],
    *,
    gallery_scope_labels: np.ndarray | None = None,
    ks: Sequence[int] = (1, 10, 100),
    chunk_size: int = 256,
) -> dict[str, RetrievalScores]:
    """Rank the gallery for every query by inner product and score each scope.

    ``relevant`` = the gallery item's label equals the query's label (negative gallery
    labels are never relevant). ``scopes`` maps a scope name to ``None`` (search the whole
    gallery) or to one label per query: that scope searches only the gallery items whose
    ``gallery_scope_labels`` (default ``gallery_labels``) equal it — the class-restricted
    search with the query's predicted class. ``n_relevant`` always counts the whole
    gallery, so relevant items excluded by a restriction count as misses.

    Memory is O(chunk_size × gallery); time is dominated by one sort per query.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    gal = np.ascontiguousarray(gallery, dtype=np.float32)
    ql = _labels(query_labels)
    gl = _labels(gallery_labels)
    sl_labels = gl if gallery_scope_labels is None else _labels(gallery_scope_labels)
    if q.ndim != 2 or gal.ndim != 2 or q.shape[1] != gal.shape[1]:
        raise ValueError(f"queries {q.shape} and gallery {gal.shape} must be (n, d) with equal d")
    if len(ql) != len(q) or len(gl) != len(gal) or len(sl_labels) != len(gal):
        raise ValueError("one label per query and per gallery item is needed")
    if len(q) == 0 or len(gal) == 0:
        raise ValueError("retrieval needs at least one query and one gallery item")
    if ql.min() < 0:
        raise ValueError("query labels must be non-negative class indices")
    ks = tuple(sorted(set(int(k) for k in ks)))
    if not ks or ks[0] < 1:
        raise ValueError("ks must be positive")
    scope_q: dict[str, np.ndarray | None] = {}
    for name, lab in scopes.items():
        scope_q[name] = None if lab is None else _labels(lab)
        if lab is not None and len(lab) != len(q):
            raise ValueError(f"scope {name!r} needs one label per query")

    # int32 label copies halve the (chunk, gallery) gathers below.
    gl32 = gl.astype(np.int32)
    sl32 = gl32 if gallery_scope_labels is None else sl_labels.astype(np.int32)
    class_count = np.bincount(gl[gl >= 0], minlength=int(ql.max()) + 1)
    n_rel_all = class_count[ql].astype(np.int64)

    accs = {name: _Accumulator(len(q), ks) for name in scope_q}
    gal_t = np.ascontiguousarray(gal.T)
    for sl in _chunks(len(q), chunk_size):
        order = _descending_order_inplace(q[sl] @ gal_t)
        ranked_labels = gl32[order]
        ranked_scope = ranked_labels if sl32 is gl32 else sl32[order]
        relevant = ranked_labels == ql[sl, None].astype(np.int32)
        for name, lab in scope_q.items():
            in_scope = None if lab is None else ranked_scope == lab[sl, None].astype(np.int32)
            _score_chunk(accs[name], sl, order, relevant, in_scope, n_rel_all[sl])
    return {name: acc.result() for name, acc in accs.items()}
