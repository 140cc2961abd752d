"""Metrics against rankings worked out by hand, and the vectorised path against a naive loop."""

from __future__ import annotations

import numpy as np
import pytest

from models.training.metrics import (
    RECALL_LEVELS,
    accuracy,
    average_precision,
    confusion_matrix,
    interpolated_precision,
    macro_f1,
    mean_average_precision,
    per_class_metrics,
    precision_at_k,
    precision_recall_curve,
    retrieval_scores,
    stable_descending_order,
)

# Ranking A: relevant at ranks 1, 3 and 6; 4 relevant items exist, one is never retrieved.
#   P@1 = 1/1, P@3 = 2/3, P@6 = 3/6 = 1/2
#   AP     = (1 + 2/3 + 1/2) / 4           = (13/6) / 4 = 13/24
#   AP@1   = 1 / min(4, 1)                 = 1
#   AP@3   = (1 + 2/3) / min(4, 3)         = (5/3) / 3  = 5/9
#   AP@10  = (1 + 2/3 + 1/2) / min(4, 10)  = 13/24 (the ranking is shorter than 10)
RANK_A = [True, False, True, False, False, True]
# Ranking B: relevant at ranks 2 and 3, 2 relevant in all.
#   P@2 = 1/2, P@3 = 2/3 → AP = (1/2 + 2/3) / 2 = (7/6) / 2 = 7/12
RANK_B = [False, True, True, False]


def test_average_precision_full_ranking() -> None:
    assert average_precision(RANK_A, 4) == pytest.approx(13 / 24)
    assert average_precision(RANK_B, 2) == pytest.approx(7 / 12)
    assert average_precision([True, True], 2) == pytest.approx(1.0)


def test_average_precision_truncated() -> None:
    assert average_precision(RANK_A, 4, k=1) == pytest.approx(1.0)
    assert average_precision(RANK_A, 4, k=3) == pytest.approx(5 / 9)
    assert average_precision(RANK_A, 4, k=10) == pytest.approx(13 / 24)
    # B@1: rank 1 is a miss → 0; B@2: (1/2) / min(2, 2) = 1/4.
    assert average_precision(RANK_B, 2, k=1) == 0.0
    assert average_precision(RANK_B, 2, k=2) == pytest.approx(1 / 4)


def test_average_precision_edge_cases() -> None:
    assert average_precision(RANK_A, 0) == 0.0  # nothing relevant: 0, not NaN
    assert average_precision([False, False], 3) == 0.0
    assert average_precision([], 3) == 0.0
    with pytest.raises(ValueError):
        average_precision([True, True], 1)  # more hits than relevant items
    with pytest.raises(ValueError):
        average_precision(RANK_A, 4, k=0)


def test_precision_at_k() -> None:
    # A: top 1 = {hit} → 1; top 3 = {hit, miss, hit} → 2/3; top 6 → 3/6.
    assert precision_at_k(RANK_A, 1) == 1.0
    assert precision_at_k(RANK_A, 3) == pytest.approx(2 / 3)
    assert precision_at_k(RANK_A, 6) == pytest.approx(1 / 2)
    # Only 6 items retrieved, but P@10 still divides by 10: 3/10.
    assert precision_at_k(RANK_A, 10) == pytest.approx(3 / 10)
    with pytest.raises(ValueError):
        precision_at_k(RANK_A, 0)


def test_mean_average_precision() -> None:
    # (13/24 + 7/12) / 2 = (13/24 + 14/24) / 2 = 27/48 = 9/16
    assert mean_average_precision([RANK_A, RANK_B], [4, 2]) == pytest.approx(9 / 16)
    # @3: A → 5/9; B → (1/2 + 2/3) / min(2, 3) = 7/12; mean = (20/36 + 21/36) / 2 = 41/72
    assert mean_average_precision([RANK_A, RANK_B], [4, 2], k=3) == pytest.approx(41 / 72)
    with pytest.raises(ValueError):
        mean_average_precision([], [])


def test_interpolated_precision_and_curve() -> None:
    # A with R = 4: hits reach recall 1/4 at P 1, 2/4 at P 2/3, 3/4 at P 1/2; recall 1 never.
    # P_interp(t) = best precision at recall >= t:
    #   t <= 0.25 → max(1, 2/3, 1/2) = 1; t in (0.25, 0.5] → 2/3; (0.5, 0.75] → 1/2; > 0.75 → 0
    levels = np.array([0.0, 0.25, 0.3, 0.5, 0.75, 0.8, 1.0])
    expected = [1, 1, 2 / 3, 2 / 3, 1 / 2, 0, 0]
    np.testing.assert_allclose(interpolated_precision(RANK_A, 4, levels), expected)
    # B with R = 2: recall 1/2 at P 1/2, recall 1 at P 2/3 → 2/3 at every level.
    np.testing.assert_allclose(interpolated_precision(RANK_B, 2, levels), [2 / 3] * 7)
    rec, prec = precision_recall_curve([RANK_A, RANK_B], [4, 2], levels)
    np.testing.assert_allclose(rec, levels)
    np.testing.assert_allclose(prec, (np.array(expected) + 2 / 3) / 2)
    # Recall levels like 0.07 * 100 = 7.000000000000001 must need 7 hits, not 8.
    seven = interpolated_precision([True] * 7, 100, RECALL_LEVELS)
    assert seven[7] == 1.0 and seven[8] == 0.0


# y_true = [0, 0, 1, 1, 1, 2], y_pred = [0, 1, 1, 1, 2, 2]: 4 of 6 right → accuracy 2/3.
# Confusion (rows true, cols predicted):  [[1, 1, 0], [0, 2, 1], [0, 0, 1]]
#   class 0: P = 1/1, R = 1/2, F1 = 2·1·½ / 1½ = 2/3
#   class 1: P = 2/3, R = 2/3, F1 = 2/3
#   class 2: P = 1/2, R = 1/1, F1 = 2·½·1 / 1½ = 2/3      → macro F1 = 2/3
Y_TRUE = [0, 0, 1, 1, 1, 2]
Y_PRED = [0, 1, 1, 1, 2, 2]


def test_classification_metrics() -> None:
    assert accuracy(Y_TRUE, Y_PRED) == pytest.approx(2 / 3)
    cm = confusion_matrix(Y_TRUE, Y_PRED, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 1], [0, 0, 1]])
    pc = per_class_metrics(cm)
    np.testing.assert_allclose(pc.precision, [1, 2 / 3, 1 / 2])
    np.testing.assert_allclose(pc.recall, [1 / 2, 2 / 3, 1])
    np.testing.assert_allclose(pc.f1, [2 / 3, 2 / 3, 2 / 3])
    np.testing.assert_array_equal(pc.support, [2, 3, 1])
    assert macro_f1(Y_TRUE, Y_PRED, 3) == pytest.approx(2 / 3)
    # A fourth class absent from both lists is left out of the macro average.
    assert macro_f1(Y_TRUE, Y_PRED, 4) == pytest.approx(2 / 3)


def test_macro_f1_counts_a_class_that_is_only_predicted() -> None:
    # y_true = [0, 0, 1], y_pred = [0, 2, 1]:
    #   class 0: P 1, R 1/2 → F1 2/3; class 1: P 1, R 1 → F1 1; class 2: P 0/1, R 0/0 → F1 0
    #   macro = (2/3 + 1 + 0) / 3 = 5/9
    assert macro_f1([0, 0, 1], [0, 2, 1], 3) == pytest.approx(5 / 9)


def test_classification_input_errors() -> None:
    with pytest.raises(ValueError):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError):
        accuracy([], [])
    with pytest.raises(ValueError):
        accuracy([0, 1], [0])


def test_stable_descending_order_matches_stable_argsort() -> None:
    rng = np.random.default_rng(0)
    # Few distinct values (ties everywhere), negatives, and both zeros.
    scores = rng.choice(np.array([-1.5, -0.0, 0.0, 0.25, 2.0, -3e-8], np.float32), (5, 200))
    scores[0, :5] = np.float32(1e30)
    np.testing.assert_array_equal(
        stable_descending_order(scores), np.argsort(-scores, axis=1, kind="stable")
    )
    cont = rng.standard_normal((3, 1000)).astype(np.float32)
    np.testing.assert_array_equal(
        stable_descending_order(cont), np.argsort(-cont, axis=1, kind="stable")
    )


# Hand-worked batch example (dim 2, inner product = first coordinate × 1):
#   gallery scores [0.9, 0.5, 0.8, 0.1, 0.5], labels [0, 1, 0, 1, 0]
#   ranking (ties by gallery order): g0 .9, g2 .8, g1 .5, g4 .5, g3 .1 → labels 0 0 1 0 1
#   query label 0, R = 3 → relevant [1, 1, 0, 1, 0]; AP = (1/1 + 2/2 + 3/4) / 3 = 11/12
#   (had g4 come before g1 the AP would be 1: the tie order matters)
#   "predicted" scope, predicted 1 (misclassified): ranking g1, g3 → no hit → AP 0, P@k 0
#   "predicted" scope, predicted 0 (correct): ranking g0, g2, g4 → all hits → AP 1
GALLERY = np.array([[0.9, 0], [0.5, 0], [0.8, 0], [0.1, 0], [0.5, 0]], np.float32)
GALLERY_LABELS = np.array([0, 1, 0, 1, 0])


def test_retrieval_scores_hand_worked() -> None:
    queries = np.array([[1, 0], [1, 0]], np.float32)
    res = retrieval_scores(
        queries, GALLERY, np.array([0, 0]), GALLERY_LABELS,
        {"all": None, "predicted": np.array([1, 0])}, ks=(1, 3, 10),
    )
    full, pred = res["all"], res["predicted"]
    np.testing.assert_allclose(full.ap, [11 / 12, 11 / 12])
    np.testing.assert_array_equal(full.top_ids[0, :6], [0, 2, 1, 4, 3, -1])
    np.testing.assert_array_equal(full.n_relevant, [3, 3])
    # P@3 = 2/3; AP@3 = (1 + 1) / min(3, 3) = 2/3; P@10 = 3/10 (5 items, divided by 10)
    np.testing.assert_allclose(full.precision_at[3], [2 / 3, 2 / 3])
    np.testing.assert_allclose(full.ap_at[3], [2 / 3, 2 / 3])
    np.testing.assert_allclose(full.precision_at[10], [3 / 10, 3 / 10])
    # The misclassified query scores 0 everywhere, the correct one 1 (P@10 = 3/10).
    np.testing.assert_allclose(pred.ap, [0.0, 1.0])
    np.testing.assert_allclose(pred.precision_at[1], [0.0, 1.0])
    np.testing.assert_allclose(pred.precision_at[10], [0.0, 3 / 10])
    np.testing.assert_allclose(pred.ap_at[10], [0.0, 1.0])
    np.testing.assert_allclose(pred.interp_precision[0], 0.0)
    np.testing.assert_allclose(pred.interp_precision[1], 1.0)
    np.testing.assert_array_equal(pred.top_ids[0, :3], [1, 3, -1])
    np.testing.assert_array_equal(pred.top_ids[1, :4], [0, 2, 4, -1])
    np.testing.assert_array_equal(pred.ranking_length, [2, 3])
    assert pred.summary()["map"] == pytest.approx(0.5)


def _naive(
    queries: np.ndarray,
    gallery: np.ndarray,
    ql: np.ndarray,
    gl: np.ndarray,
    scope: np.ndarray | None,
    scope_gl: np.ndarray,
    ks: tuple[int, ...],
) -> dict[str, np.ndarray]:
    """One query at a time with np.argsort and the pure functions above."""
    out: dict[str, list[float]] = {"ap": []}
    out.update({f"{name}{k}": [] for k in ks for name in ("ap", "p")})
    interp = []
    for i, q in enumerate(queries):
        order = np.argsort(-(gallery @ q), kind="stable")
        if scope is not None:
            order = order[scope_gl[order] == scope[i]]
        rel = gl[order] == ql[i]
        n_rel = int(np.sum(gl == ql[i]))
        out["ap"].append(average_precision(rel, n_rel))
        for k in ks:
            out[f"ap{k}"].append(average_precision(rel, n_rel, k))
            out[f"p{k}"].append(precision_at_k(rel, k))
        interp.append(interpolated_precision(rel, n_rel))
    res = {key: np.array(v) for key, v in out.items()}
    res["interp"] = np.stack(interp)
    return res


@pytest.mark.parametrize("chunk_size", [7, 256])
def test_vectorised_matches_naive_loop(chunk_size: int) -> None:
    rng = np.random.default_rng(42)
    n_gal, n_q, dim, n_cls = 400, 45, 6, 4
    # Small integers: inner products are exact in float32 whatever the BLAS summation
    # order, and tie often, so the tie rule is exercised.
    gallery = rng.integers(-2, 3, (n_gal, dim)).astype(np.float32)
    queries = rng.integers(-2, 3, (n_q, dim)).astype(np.float32)
    gl = rng.integers(0, n_cls, n_gal)
    gl[:3] = -1  # unknown-class gallery items are never relevant
    ql = rng.integers(0, n_cls, n_q)
    ql[0] = n_cls  # a class with no gallery item: R = 0
    pred = np.where(rng.random(n_q) < 0.7, ql, rng.integers(0, n_cls, n_q))
    scope_gl = np.where(rng.random(n_gal) < 0.9, gl, rng.integers(0, n_cls, n_gal))
    ks = (1, 5, 50)
    res = retrieval_scores(
        queries, gallery, ql, gl, {"all": None, "predicted": pred},
        ks=ks, chunk_size=chunk_size,
    )
    res_scoped = retrieval_scores(
        queries, gallery, ql, gl, {"predicted": pred},
        gallery_scope_labels=scope_gl, ks=ks, chunk_size=chunk_size,
    )
    for got, scope, sgl in [
        (res["all"], None, gl),
        (res["predicted"], pred, gl),
        (res_scoped["predicted"], pred, scope_gl),
    ]:
        want = _naive(queries, gallery, ql, gl, scope, sgl, ks)
        np.testing.assert_allclose(got.ap, want["ap"], atol=1e-12)
        for k in ks:
            np.testing.assert_allclose(got.ap_at[k], want[f"ap{k}"], atol=1e-12)
            np.testing.assert_allclose(got.precision_at[k], want[f"p{k}"], atol=1e-12)
        np.testing.assert_allclose(got.interp_precision, want["interp"], atol=1e-12)
    assert res["all"].ap[0] == 0.0
    misclassified = pred != ql
    assert misclassified.any()
    np.testing.assert_array_equal(res["predicted"].ap[misclassified], 0.0)


def test_retrieval_scores_input_errors() -> None:
    g = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError):
        retrieval_scores(np.zeros((1, 3), np.float32), g, [0], [0, 0, 0], {"all": None})
    with pytest.raises(ValueError):
        retrieval_scores(np.zeros((1, 2), np.float32), g, [-1], [0, 0, 0], {"all": None})
    with pytest.raises(ValueError):
        retrieval_scores(np.zeros((1, 2), np.float32), g, [0], [0, 0, 0], {"p": np.array([0, 1])})
