"""The SQLite + originals store, and the data-directory lock."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from app.service.lock import DataDirLock, DataDirLocked
from app.service.store import NewItem, Store, StoreMismatchError


def _item(data: bytes, label: str = "CXR", seed: int = 0) -> NewItem:
    vec = np.random.default_rng(seed).standard_normal(4).astype(np.float32)
    return NewItem(hashlib.sha256(data).hexdigest(), data, label, "given", "image/png", "png",
                   {"k": seed}, vec / np.linalg.norm(vec))


def test_insert_get_delete_and_ids_never_reused(tmp_path: Path) -> None:
    store = Store(tmp_path)
    ids = store.insert([_item(b"a", seed=1), _item(b"b", "Hand", seed=2)])
    assert ids == [1, 2] and store.count() == 2 and store.max_id() == 2
    item = store.get(1)
    assert item is not None and item.label == "CXR" and item.metadata == {"k": 1}
    assert store.read_original(item) == b"a"
    assert set(store.find_sha([item.sha256, "0" * 64])) == {item.sha256}
    deleted = store.delete(2)
    assert deleted is not None and store.get(2) is None and store.delete(2) is None
    store.unlink_original(deleted.sha256)
    assert store.insert([_item(b"c", seed=3)]) == [3]
    store.close()


def test_vectors_round_trip_in_chunks(tmp_path: Path) -> None:
    store = Store(tmp_path)
    items = [_item(bytes([i]), seed=i) for i in range(10)]
    store.insert(items)
    got = list(store.vectors(4, chunk=3))
    assert [len(c[0]) for c in got] == [3, 3, 3, 1]
    vecs = np.concatenate([c[1] for c in got])
    np.testing.assert_array_equal(vecs, np.stack([it.vector for it in items]))
    (only,) = store.vectors(4, ids=np.array([2, 5]))
    assert only[0].tolist() == [2, 5] and only[2] == ["CXR", "CXR"]


def test_a_failed_transaction_stores_no_row_and_no_file(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.insert([_item(b"a")])
    with pytest.raises(sqlite3.IntegrityError):
        store.insert([_item(b"new"), _item(b"a")])  # the second one violates UNIQUE(sha256)
    assert store.count() == 1
    # "new" was written before its row failed, and removed again by the failed insert;
    # "a" (stored before, by the first insert) is kept.
    assert store.clean_orphans() == 0
    assert len(list(store.originals.glob("*/*"))) == 1


def test_model_identity_is_enforced(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.check_model("fp-one", 4, "m1")
    store.check_model("fp-two", 8, "m2")  # an empty store adopts the new model
    store.insert([_item(b"a")])
    with pytest.raises(StoreMismatchError, match="CBMIR_DATA_DIR"):
        store.check_model("fp-one", 4, "m1")
    store.check_model("fp-two", 8, "m2")


def test_paths_come_only_from_hex_digests(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(ValueError):
        store.original_path("../" + "a" * 61)


def test_data_dir_lock(tmp_path: Path) -> None:
    first = DataDirLock(tmp_path).acquire()
    with pytest.raises(DataDirLocked, match="in use by another cbmir process"):
        DataDirLock(tmp_path).acquire()
    first.release()
    DataDirLock(tmp_path).acquire().release()
