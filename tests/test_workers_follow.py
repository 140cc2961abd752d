"""The pieces of ``cbmir serve --workers N`` on the embedded backend, in one process: two
:class:`Store` connections on one data dir stand for two workers (``PRAGMA data_version``
and the change feed work between connections as between processes), each with its own
FAISS index and :class:`Follower`. The real multi-process service: test_serve_workers.py."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import OLD_ITEMS_TABLE

from app.service.lock import DataDirLock, DataDirLocked
from app.service.store import SCHEMA_VERSION, NewItem, Store
from app.service.workers import Follower, LeaderLock, SharedWriteLock, check_supervised
from index import FaissIndex

DIM = 8


def _item(n: int, label: str = "A") -> NewItem:
    v = np.zeros(DIM, np.float32)
    v[n % DIM] = 1.0
    v[(n + 1) % DIM] = 0.01 * n
    return NewItem(f"{n:064x}", b"x%d" % n, label, "given", "image/png", "png", {}, v)


class Worker:
    """One "process": a store connection, its index, its follower."""

    def __init__(self, data_dir: Path) -> None:
        self.store = Store(data_dir)
        self.lock = threading.Lock()
        version, cursor = self.store.data_version(), self.store.cursor()
        self.index = FaissIndex(DIM)
        for ids, vecs, labels in self.store.vectors(DIM):  # the start-up reconcile
            self.index.add(ids, vecs, labels)
        self.follower = Follower(self.store, self.index, self.lock, cursor, version)

    def write(self, *ns: int, label: str = "A") -> list[int]:
        """What Ingester does: commit, then add to this process's index."""
        items = [_item(n, label) for n in ns]
        with self.lock:
            ids = self.store.insert(items)
            self.index.add(np.array(ids, np.int64), np.stack([i.vector for i in items]),
                           [i.label for i in items])
        return list(ids)

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[Worker, Worker]]:
    a, b = Worker(tmp_path), Worker(tmp_path)
    yield a, b
    a.close()
    b.close()


def test_adds_deletes_and_relabels_reach_the_other_index(two: tuple[Worker, Worker]) -> None:
    a, b = two
    assert not b.follower.behind() and b.follower.catch_up() == 0  # nothing committed
    ids = a.write(1, 2, 3)
    assert b.follower.behind()
    assert b.follower.catch_up() == 3
    assert sorted(b.index.ids().tolist()) == ids and not b.follower.behind()
    # This worker's own writes are in its index already: applied once, not twice.
    assert a.follower.catch_up() == 0 and len(a.index) == 3
    a.store.delete(ids[0])
    a.index.remove([ids[0]])
    a.store.relabel(ids[1], "B")
    assert b.follower.catch_up() == 2
    assert sorted(b.index.ids().tolist()) == ids[1:]
    assert b.index.label_counts() == {"A": 1, "B": 1}
    top = b.index.search(_item(2).vector[None], 1, ["B"])
    assert int(top.ids[0][0]) == ids[1]
    assert a.store.count() == len(b.index) == 2


def test_delete_where_and_what_changed_twice_between_catch_ups(
    two: tuple[Worker, Worker],
) -> None:
    from app.service.store import ItemFilter

    a, b = two
    ids = a.write(10, 11, 12)
    a.store.relabel(ids[2], "C")  # relabelled before b ever saw it: comes as added
    a.store.delete(ids[0])  # added and deleted since b's cursor: never appears in b
    b.follower.catch_up()
    assert sorted(b.index.ids().tolist()) == ids[1:]
    assert b.index.label_counts() == {"A": 1, "C": 1}
    # Every deletion path is logged (a trigger): here one commit of several rows.
    assert len(a.store.delete_where(ItemFilter(label_source="given"))) == 2
    assert b.follower.catch_up() == 2 and len(b.index) == 0


def test_own_row_relabelled_by_another_before_a_catch_up(two: tuple[Worker, Worker]) -> None:
    """a's own write is in a's index but past a's cursor; b relabels it: a moves it."""
    a, b = two
    (own,) = a.write(15)
    b.follower.catch_up()
    b.store.relabel(own, "B")
    a.follower.catch_up()
    assert a.index.label_counts() == {"B": 1}
    assert int(a.index.search(_item(15).vector[None], 1, ["B"]).ids[0][0]) == own


def test_applying_twice_is_harmless(two: tuple[Worker, Worker]) -> None:
    a, b = two
    ids = a.write(20, 21)
    changes = b.store.changes_since(b.follower.cursor, DIM)
    assert b.follower.apply(changes) == 2
    assert b.follower.apply(changes) == 0  # the same rows again: nothing added twice
    a.store.relabel(ids[0], "B")
    again = b.store.changes_since(changes.cursor, DIM)
    b.follower.apply(again)
    b.follower.apply(again)
    assert b.index.label_counts() == {"A": 1, "B": 1}


def test_a_commit_during_start_up_is_not_missed(tmp_path: Path) -> None:
    """The cursor is read before the index is reconciled: a row committed in between is
    caught up afterwards (Retriever.open reads it in that order)."""
    a = Worker(tmp_path)
    b_store = Store(tmp_path)
    version, cursor = b_store.data_version(), b_store.cursor()
    a.write(30)  # lands after the cursor, before b builds its index
    index = FaissIndex(DIM)
    for ids, vecs, labels in b_store.vectors(DIM):
        index.add(ids, vecs, labels)
    follower = Follower(b_store, index, threading.Lock(), cursor, version)
    a.write(31)
    assert follower.catch_up() == 1 and len(index) == 2  # 30 was in; 31 is added once
    a.close()
    b_store.close()


def test_the_cursor_counts_ids_given_and_deleted(tmp_path: Path) -> None:
    a = Worker(tmp_path)
    ids = a.write(40, 41)
    a.store.delete(ids[1])
    assert a.store.cursor().item_id == ids[1]  # the sequence, not MAX(id)
    assert a.store.cursor().deletion_seq == 1
    a.close()


def test_catch_up_waits_for_the_process_lock_or_gives_up(two: tuple[Worker, Worker]) -> None:
    a, b = two
    a.write(50)
    with b.lock:  # a write of b's own in progress
        assert b.follower.catch_up(timeout=0.05) == 0
        assert b.follower.behind()
    assert b.follower.catch_up() == 1


def test_store_of_version_2_gains_the_deletion_log(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "cbmir.sqlite3")
    db.executescript(OLD_ITEMS_TABLE + """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE relabels (seq INTEGER PRIMARY KEY AUTOINCREMENT, item_id INTEGER);""")
    db.execute("INSERT INTO items (sha256, label, label_source, content_type, format, "
               "metadata, vector, created_at) VALUES (?, 'A', 'given', 'image/png', 'png', ?,"
               " ?, 't')", ("d" * 64, json.dumps({}), np.ones(DIM, "<f4").tobytes()))
    db.commit()
    db.close()
    Store(tmp_path).close()  # to version 2 and 3
    store = Store(tmp_path)
    try:
        assert store.meta()["schema_version"] == str(SCHEMA_VERSION) == "3"
        assert store.cursor().item_id == 1
        store.delete(1)
        assert store.cursor().deletion_seq == 1
        assert store.changes_since(store.cursor(), DIM).empty
    finally:
        store.close()


def test_write_lock_excludes_other_holders_of_the_file(tmp_path: Path) -> None:
    first, second = SharedWriteLock(tmp_path), SharedWriteLock(tmp_path)  # two "workers"
    order: list[str] = []

    def take_second() -> None:
        with second:
            order.append("second")

    with first:
        t = threading.Thread(target=take_second)
        t.start()
        time.sleep(0.2)  # long enough for the thread to reach the flock
        order.append("first")
    t.join(10)
    assert order == ["first", "second"]
    first.close()
    second.close()


def test_one_leader_and_the_next_when_it_lets_go(tmp_path: Path) -> None:
    a, b = LeaderLock(tmp_path), LeaderLock(tmp_path)
    assert a.try_acquire() and a.held
    assert not b.try_acquire() and not b.held
    a.release()  # the kernel does this when the leader dies
    assert b.try_acquire()
    b.release()


def test_a_worker_refuses_a_lock_not_held_by_its_supervisor(tmp_path: Path) -> None:
    with pytest.raises(DataDirLocked, match="not locked by a supervisor"):
        check_supervised(tmp_path)
    lock = DataDirLock(tmp_path).acquire()  # held by this process, not by our parent
    try:
        with pytest.raises(DataDirLocked, match="not by this worker's supervisor"):
            check_supervised(tmp_path)
    finally:
        lock.release()


def test_only_the_leader_saves_after_catching_up(two: tuple[Worker, Worker], tmp_path: Path
                                                 ) -> None:
    from app.service.snapshots import Snapshotter

    a, b = two
    snaps = tmp_path / "index"
    made = []
    def applied_relabels(f: Follower) -> Callable[[], int]:
        return lambda: f.cursor.relabel_seq

    for w in (a, b):
        s = Snapshotter(w.index, w.store, snaps, "fp", every=10**6, seconds=3600,
                        leader=LeaderLock(tmp_path), catch_up=w.follower.catch_up,
                        relabel_seq=applied_relabels(w.follower))
        w.follower.on_applied = s.note_writes
        made.append(s)
    sa, sb = made
    try:
        ids = b.write(60, 61)
        a.store.relabel(a.write(62)[0], "B")
        assert sa.snapshot(force=True)  # a leads from here on
        assert not sb.snapshot(force=True)  # b does not save, but it did catch up
        assert len(b.index) == 3
        saved = FaissIndex.load(snaps)
        assert set(ids) <= set(saved.ids().tolist()) and len(saved) == 3  # b's rows too
        assert saved.extra["relabel_seq"] == a.follower.cursor.relabel_seq == 1
        assert abs(sb.state.saved_at - sa.state.saved_at) < 5  # b: the published age
    finally:
        sa.close()
        sb.close()
        sa.leader.release()  # type: ignore[union-attr]
