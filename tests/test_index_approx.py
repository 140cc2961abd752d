"""Approximate sub-indexes (IVF, HNSW): automatic switch, recall, removal, persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from index import FaissIndex

# Tiny FAISS calls are dominated by OpenMP spinning on a shared 2-core box.
pytestmark = pytest.mark.usefixtures("single_omp_thread")


DIM = 32
N = 2400
THRESHOLD = 2000
K = 10


def clustered(n: int, seed: int, clusters: int = 16) -> np.ndarray:
    """Unit vectors around a few centres, like embeddings of a few image kinds."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).standard_normal((clusters, DIM))
    x = centres[rng.integers(0, clusters, n)] + 0.4 * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


DATA = clustered(N, seed=1)
IDS = np.arange(N, dtype=np.int64) * 2 + 10
QUERIES = clustered(100, seed=2)


def exact_topk(ids: np.ndarray, x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    order = np.argsort(-(q @ x.T), axis=1)[:, :k]
    return ids[order]


def recall(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got, want, strict=True)]))


@pytest.fixture(params=["ivf", "hnsw"])
def approx(request) -> FaissIndex:
    """Built in two batches so the switch happens on crossing the threshold."""
    idx = FaissIndex(DIM, index_type=request.param, approx_min_size=THRESHOLD)
    idx.add(IDS[:1500], DATA[:1500], "ct")
    assert idx.describe()["ct"]["kind"] == "flat"  # below the threshold: exact
    idx.add(IDS[1500:], DATA[1500:], "ct")
    idx.add(np.array([1]), DATA[:1], "mr")  # a small label stays flat
    return idx


def test_switches_to_approximate_and_keeps_recall(approx: FaissIndex) -> None:
    info = approx.describe()
    assert info["ct"]["kind"] == approx.index_type and info["ct"]["count"] == N
    assert info["mr"]["kind"] == "flat"
    res = approx.search(QUERIES, K, labels=["ct"])
    assert recall(res.ids, exact_topk(IDS, DATA, QUERIES, K)) >= 0.95
    assert np.all(np.diff(res.scores, axis=1) <= 1e-6)
    # merging all labels: the "mr" copy of DATA[0] ties with the "ct" original
    assert set(approx.search(DATA[:1], 2).ids[0].tolist()) == {1, IDS[0]}


def test_remove_save_load(approx: FaissIndex, tmp_path: Path) -> None:
    """Remove 10%, check, then round-trip through a snapshot."""
    gone = IDS[::10]
    assert approx.remove(gone) == len(gone)
    live = ~np.isin(IDS, gone)
    res = approx.search(QUERIES, K, labels=["ct"])
    assert not np.isin(res.ids, gone).any()
    assert recall(res.ids, exact_topk(IDS[live], DATA[live], QUERIES, K)) >= 0.95
    if approx.index_type == "hnsw":  # below the compaction ratio: tombstones kept
        assert approx.describe()["ct"]["tombstones"] == len(gone)
    approx.save(tmp_path)
    loaded = FaissIndex.load(tmp_path)
    assert loaded.describe() == approx.describe() and len(loaded) == N + 1 - len(gone)
    again = loaded.search(QUERIES, K)
    np.testing.assert_array_equal(again.ids, approx.search(QUERIES, K).ids)
    # re-adding a removed (tombstoned) id makes it findable again
    loaded.add(gone[:1], DATA[:1], "ct")
    assert gone[0] in loaded.search(DATA[:1], 3, labels=["ct"]).ids[0]


def test_hnsw_compacts_tombstones() -> None:
    idx = FaissIndex(DIM, index_type="hnsw", approx_min_size=300)
    idx.add(IDS[:400], DATA[:400], "ct")
    idx.remove(IDS[:60])  # 15%: tombstoned
    assert idx.describe()["ct"]["tombstones"] == 60
    idx.remove(IDS[60:100])  # 25% > 20%: rebuilt without them
    info = idx.describe()["ct"]
    assert info == {**info, "kind": "hnsw", "tombstones": 0, "count": 300}
    assert not np.isin(idx.search(QUERIES, 50).ids, IDS[:100]).any()


def test_ivf_retrains_after_4x_growth_and_loads_back_as_flat(tmp_path: Path) -> None:
    idx = FaissIndex(DIM, index_type="ivf", approx_min_size=200)
    idx.add(IDS[:250], DATA[:250], "ct")
    assert idx.describe()["ct"]["trained_at"] == 250
    for start in range(250, 1000, 125):  # growth repacks lists, 4x retrains
        idx.add(IDS[start : start + 125], DATA[start : start + 125], "ct")
    assert idx.describe()["ct"]["trained_at"] == 1000
    res = idx.search(QUERIES, K)
    assert recall(res.ids, exact_topk(IDS[:1000], DATA[:1000], QUERIES, K)) >= 0.95
    idx.save(tmp_path)
    flat = FaissIndex.load(tmp_path, index_type="flat")  # settings may change on load
    assert flat.describe()["ct"]["kind"] == "flat"
    np.testing.assert_array_equal(
        flat.search(QUERIES, K).ids, exact_topk(IDS[:1000], DATA[:1000], QUERIES, K)
    )


def test_ivf_is_really_approximate_and_honours_nprobe() -> None:
    """Guards against a silently exhaustive "IVF": probing one list loses recall."""
    idx = FaissIndex(DIM, index_type="ivf", approx_min_size=THRESHOLD, nprobe=1)
    idx.add(IDS, DATA, "ct")
    res = idx.search(QUERIES, K)
    assert recall(res.ids, exact_topk(IDS, DATA, QUERIES, K)) < 0.9
