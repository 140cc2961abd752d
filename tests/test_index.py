"""Exact (flat) behaviour of the labelled FAISS index: search, removal, validation, threads."""

from __future__ import annotations

import ast
import threading
from pathlib import Path

import faiss
import numpy as np
import pytest

from index import FaissIndex, SearchResult, VectorIndex
from index._gpu import gpu_count

# Tiny FAISS calls are dominated by OpenMP spinning on a shared 2-core box.
pytestmark = pytest.mark.usefixtures("single_omp_thread")


DIM = 16
LABELS = ("a", "b", "c")


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(
    db: dict[int, tuple[np.ndarray, str]], q: np.ndarray, k: int, labels: list[str] | None
) -> SearchResult:
    """Reference top-k by inner product over the items of ``labels`` (all if None)."""
    keep = [i for i, (_, lab) in db.items() if labels is None or lab in labels]
    out = SearchResult.empty(len(q), k)
    if keep:
        ids = np.array(keep, dtype=np.int64)
        scores = q @ np.stack([db[i][0] for i in keep]).T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        m = order.shape[1]
        out.ids[:, :m] = ids[order]
        out.scores[:, :m] = np.take_along_axis(scores, order, axis=1)
    return out


def assert_same_topk(
    got: SearchResult, ref: SearchResult, db: dict[int, tuple[np.ndarray, str]], q: np.ndarray
) -> None:
    """Exact match up to ties: same scores, and every returned id really has its score."""
    assert got.ids.dtype == np.int64 and got.scores.dtype == np.float32
    assert got.ids.shape == ref.ids.shape == got.scores.shape
    np.testing.assert_allclose(got.scores, ref.scores, atol=1e-5)
    np.testing.assert_array_equal(got.ids == -1, ref.ids == -1)
    for row, (ids, scores) in enumerate(zip(got.ids, got.scores, strict=True)):
        real = ids[ids >= 0]
        assert len(set(real.tolist())) == len(real)
        true = np.array([q[row] @ db[i][0] for i in real.tolist()], dtype=np.float32)
        np.testing.assert_allclose(scores[: len(real)], true, atol=1e-5)
        assert np.all(np.diff(scores[: len(real)]) <= 1e-6)


@pytest.fixture()
def filled() -> tuple[FaissIndex, dict[int, tuple[np.ndarray, str]]]:
    rng = np.random.default_rng(0)
    idx = FaissIndex(DIM, model_fingerprint="m1")
    db: dict[int, tuple[np.ndarray, str]] = {}
    ids = rng.choice(10_000, size=300, replace=False).astype(np.int64)
    labels = [LABELS[i % 3] for i in range(300)]
    x = unit(rng, 300)
    for start in (0, 100, 170):  # several batches, mixed labels
        stop = {0: 100, 100: 170, 170: 300}[start]
        idx.add(ids[start:stop], x[start:stop], labels[start:stop])
    db.update({int(i): (x[n], labels[n]) for n, i in enumerate(ids)})
    return idx, db


@pytest.mark.parametrize("labels", [None, ["b"], ["a", "c"], ["c", "a", "c"]])
def test_search_matches_brute_force(filled, labels) -> None:
    idx, db = filled
    q = unit(np.random.default_rng(1), 7)
    want = None if labels is None else list(dict.fromkeys(labels))
    assert_same_topk(idx.search(q, 10, labels=labels), brute_force(db, q, 10, want), db, q)


def test_single_vector_query_and_str_label(filled) -> None:
    idx, db = filled
    q = unit(np.random.default_rng(2), 1)
    res = idx.search(q[0], 5, labels="a")
    assert_same_topk(res, brute_force(db, q, 5, ["a"]), db, q)


def test_padding_when_k_exceeds_count() -> None:
    rng = np.random.default_rng(3)
    idx = FaissIndex(DIM)
    q = unit(rng, 2)
    empty = idx.search(q, 4)
    assert (empty.ids == -1).all() and np.isneginf(empty.scores).all()
    idx.add(np.array([5, 6, 7]), unit(rng, 3), ["a", "a", "b"])
    res = idx.search(q, 5)
    assert (res.ids[:, 3:] == -1).all() and np.isneginf(res.scores[:, 3:]).all()
    assert set(res.ids[0, :3].tolist()) == {5, 6, 7}
    one = idx.search(q, 5, labels=["b"])
    assert (one.ids[:, 0] == 7).all() and (one.ids[:, 1:] == -1).all()
    unknown = idx.search(q, 3, labels=["nope"])
    assert (unknown.ids == -1).all() and unknown.ids.shape == (2, 3)
    assert idx.search(q, 3, labels=[]).ids.shape == (2, 3)


def test_remove_then_search(filled) -> None:
    idx, db = filled
    all_ids = sorted(db)
    gone = all_ids[::4] + [all_ids[1]]
    assert idx.remove(np.array(gone + [99_999, gone[0]])) == len(gone)  # unknown/dup ignored
    for i in gone:
        del db[i]
    assert len(idx) == len(db)
    assert sorted(idx.ids().tolist()) == sorted(db)
    q = unit(np.random.default_rng(4), 5)
    for labels in (None, ["a"]):
        res = idx.search(q, 20, labels=labels)
        assert not np.isin(res.ids, gone).any()
        assert_same_topk(res, brute_force(db, q, 20, labels), db, q)
    assert idx.remove([]) == 0
    assert idx.remove(gone) == 0


def test_removing_a_whole_label_and_readding(filled) -> None:
    idx, db = filled
    b_ids = [i for i, (_, lab) in db.items() if lab == "b"]
    assert idx.remove(b_ids) == len(b_ids)
    assert "b" not in idx.label_counts()
    res = idx.search(unit(np.random.default_rng(5), 1), 3, labels=["b"])
    assert (res.ids == -1).all()
    idx.add(np.array(b_ids[:2]), np.stack([db[i][0] for i in b_ids[:2]]), "b")
    assert idx.label_counts()["b"] == 2


def test_ids_and_label_counts(filled) -> None:
    idx, db = filled
    ids = idx.ids()
    assert ids.dtype == np.int64 and sorted(ids.tolist()) == sorted(db)
    assert idx.label_counts() == {"a": 100, "b": 100, "c": 100}
    assert len(idx) == 300
    assert {v["kind"] for v in idx.describe().values()} == {"flat"}


def test_duplicate_ids_raise_and_leave_index_unchanged(filled) -> None:
    idx, db = filled
    rng = np.random.default_rng(6)
    existing = next(iter(db))
    with pytest.raises(ValueError, match="already in the index"):
        idx.add(np.array([20_001, existing]), unit(rng, 2), "a")
    with pytest.raises(ValueError, match="duplicate ids"):
        idx.add(np.array([20_002, 20_002]), unit(rng, 2), "a")
    assert len(idx) == 300 and 20_001 not in idx.ids()


@pytest.mark.parametrize(
    ("ids", "vectors", "labels", "match"),
    [
        (np.arange(2), np.zeros((2, DIM + 1), np.float32), "a", "shape"),
        (np.arange(2), np.zeros((2, 3, DIM), np.float32), "a", "shape"),
        (np.arange(2), np.full((2, DIM), np.nan, np.float32), "a", "NaN"),
        (np.arange(3), np.zeros((2, DIM), np.float32), "a", "3 ids but 2 vectors"),
        (np.arange(2), np.zeros((2, DIM), np.float32), ["a"], "1 labels"),
        (np.arange(2), np.zeros((2, DIM), np.float32), ["a", ""], "non-empty"),
        (np.array([1.0, 2.0]), np.zeros((2, DIM), np.float32), "a", "integers"),
        (np.array([-1, 2]), np.zeros((2, DIM), np.float32), "a", "non-negative"),
    ],
)
def test_add_validation(ids, vectors, labels, match) -> None:
    idx = FaissIndex(DIM)
    with pytest.raises(ValueError, match=match):
        idx.add(ids, vectors, labels)
    assert len(idx) == 0


def test_search_and_constructor_validation() -> None:
    idx = FaissIndex(DIM)
    with pytest.raises(ValueError, match="shape"):
        idx.search(np.zeros((1, DIM - 1), np.float32), 3)
    with pytest.raises(ValueError, match="NaN or infinite"):
        idx.search(np.full((1, DIM), np.inf, np.float32), 3)
    for bad_k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="k must be"):
            idx.search(np.zeros((1, DIM), np.float32), bad_k)
    with pytest.raises(ValueError, match="dim"):
        FaissIndex(0)
    with pytest.raises(ValueError, match="index_type"):
        FaissIndex(DIM, index_type="lsh")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="device"):
        FaissIndex(DIM, device="tpu")  # type: ignore[arg-type]


@pytest.mark.skipif(gpu_count() > 0, reason="checks the no-GPU error path")
def test_cuda_without_gpu_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="device='cuda'"):
        FaissIndex(DIM, device="cuda")
    assert FaissIndex(DIM, device="auto").describe() == {}


def test_implements_protocol() -> None:
    assert isinstance(FaissIndex(DIM), VectorIndex)


def test_index_package_never_imports_app_or_models() -> None:
    for path in Path(__file__).resolve().parents[1].joinpath("index").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not [n for n in names if n.split(".")[0] in {"app", "models"}], path


def test_concurrent_add_remove_search_save(tmp_path: Path) -> None:
    """Writers mutate (crossing the IVF threshold) while readers search and a saver
    snapshots; no exceptions, no torn state, consistent snapshots."""
    rng = np.random.default_rng(7)
    idx = FaissIndex(DIM, index_type="ivf", approx_min_size=400)
    x = unit(rng, 1200)
    errors: list[BaseException] = []
    done = threading.Event()

    def writer(part: int) -> None:
        try:
            base = part * 600
            for start in range(base, base + 600, 20):
                ids = np.arange(start, start + 20)
                idx.add(ids, x[start : start + 20], LABELS[part])
                idx.remove(ids[:5])  # ids ending in 0..4 of each batch go away
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader(seed: int) -> None:
        r = np.random.default_rng(seed)
        try:
            while not done.is_set():
                q = unit(r, 3)
                res = idx.search(q, 10, labels=None if seed % 2 else ["a"])
                for row in range(3):
                    ids = res.ids[row][res.ids[row] >= 0]
                    assert len(set(ids.tolist())) == len(ids)
                    # every hit is a real item carrying its own vector's score
                    np.testing.assert_allclose(
                        res.scores[row, : len(ids)], x[ids] @ q[row], atol=1e-5
                    )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def saver() -> None:
        try:
            for _ in range(3):
                idx.save(tmp_path)
                FaissIndex.load(tmp_path)  # validates counts against the sidecar
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    writers = [threading.Thread(target=writer, args=(p,)) for p in range(2)]
    readers = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    readers.append(threading.Thread(target=saver))
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    done.set()
    for t in readers:
        t.join()
    assert not errors, errors
    assert len(idx) == 2 * 600 * 15 // 20
    assert idx.label_counts() == {"a": 450, "b": 450}
    assert idx.describe()["a"]["kind"] == "ivf"
    idx.save(tmp_path)
    assert FaissIndex.load(tmp_path).label_counts() == {"a": 450, "b": 450}


def test_id_map_matches_a_dict_across_merges() -> None:
    """The compact id map (sorted arrays + recent dict) against a plain dict."""
    from index._idmap import IdMap

    rng = np.random.default_rng(8)
    idmap, ref = IdMap(), {}
    pool = rng.permutation(50_000).astype(np.int64)
    for step in range(12):
        new = pool[step * 3000 : (step + 1) * 3000]
        assert len(idmap.present(new)) == 0
        idmap.add(new.tolist(), step % 3)
        ref.update(dict.fromkeys(new.tolist(), step % 3))
        probe = np.unique(rng.choice(pool[: (step + 1) * 3000 + 500], 800))
        assert set(idmap.present(probe).tolist()) == {i for i in probe.tolist() if i in ref}
        found, codes = idmap.pop(probe[::2])
        assert dict(zip(found.tolist(), codes.tolist(), strict=True)) == {
            i: ref.pop(i) for i in probe[::2].tolist() if i in ref
        }
        assert len(idmap) == len(ref)
    assert sorted(idmap.all_ids().tolist()) == sorted(ref)


def test_gpu_mirror_bookkeeping_with_cpu_stand_in(monkeypatch) -> None:
    """The mirror logic (append on add, re-copy on remove/rebuild), with CPU clones as "GPU"."""
    import index.faiss_index as fi
    from index._gpu import GpuMirrors

    searched: list[str] = []

    class CountingMirrors(GpuMirrors):
        def search(self, label: str, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray] | None:
            hit = super().search(label, x, k)
            if hit is not None:
                searched.append(label)
            return hit

    monkeypatch.setattr(fi, "use_gpu", lambda device: True)
    monkeypatch.setattr(fi, "GpuMirrors", lambda: CountingMirrors(copy=faiss.clone_index))
    rng = np.random.default_rng(9)
    mirrored = FaissIndex(DIM, device="cuda", index_type="ivf", approx_min_size=300)
    plain = FaissIndex(DIM, index_type="ivf", approx_min_size=300)
    x = unit(rng, 400)
    q = unit(rng, 4)
    steps = [
        ("add", np.arange(0, 100), "a"),
        ("add", np.arange(100, 150), "a"),  # appended to the mirror
        ("add", np.arange(150, 170), "b"),
        ("remove", np.arange(0, 100, 3), None),  # mirror copied again
        ("add", np.arange(170, 400), "a"),  # "a" turns IVF: mirror dropped
    ]
    for op, ids, label in steps:
        for idx in (mirrored, plain):
            if op == "add":
                idx.add(ids, x[ids], label)
            else:
                idx.remove(ids)
        searched.clear()
        for labels in (None, ["a"], ["b"]):
            got, want = mirrored.search(q, 8, labels), plain.search(q, 8, labels)
            np.testing.assert_array_equal(got.ids, want.ids)
            np.testing.assert_allclose(got.scores, want.scores, atol=1e-6)
        assert ("a" in searched) == (mirrored.describe()["a"]["kind"] == "flat")
    assert mirrored.describe()["b"]["gpu"] and not mirrored.describe()["a"]["gpu"]
