"""Durable storage of the service: SQLite rows + content-addressed originals.

Design (durability and recovery)
--------------------------------
* **SQLite is the source of truth.** ``DATA_DIR/cbmir.sqlite3`` (WAL, ``synchronous=FULL``)
  holds one row per image: ``id`` (``INTEGER PRIMARY KEY AUTOINCREMENT``, so ids are never
  reused, even after a delete), ``sha256`` (unique: the same bytes are stored once),
  ``label``, ``label_source`` (``given``/``predicted``), ``content_type``, ``format``,
  ``metadata`` (JSON), ``vector`` (the float32 descriptor), ``created_at`` and
  ``in_distribution`` (the OOD verdict at upload: 1, 0, or NULL when unchecked — also for
  rows of stores made before the column existed, which gain it at open). Items made from
  DICOM also have first-class identity columns (schema version 2): ``study_uid``,
  ``series_uid``, ``sop_uid``, ``frame`` (the 1-based frame the image was made from),
  ``modality``, ``body_part``, ``series_description``, ``instance_number``, and
  ``wado_url`` when the instance came from an archive. ``(sop_uid, frame)`` is unique:
  the same SOP instance re-sent in another transfer syntax or with an edited header is
  the same item. ``stored_as`` says what the original file holds (``original``,
  ``deidentified`` or ``rendering``). Stores of version 1 gain the columns at open,
  filled from their metadata JSON. A ``meta``
  table records the model fingerprint and embedding dimension the vectors came from; the
  service refuses to start with a different model (use a new ``DATA_DIR`` or re-index).
* **Originals** are stored by content at ``DATA_DIR/originals/ab/<sha256>``, written to a
  temporary file, fsync'd and renamed *before* their row commits. A crash in between
  leaves an orphan file, which is harmless and removed at the next start; a committed row
  therefore always has its file.
* **The FAISS index is derived data.** It lives in memory and is snapshotted atomically to
  ``DATA_DIR/index/`` every ``SNAPSHOT_EVERY`` writes, every ``SNAPSHOT_SECONDS`` when
  dirty, and at shutdown, with ``extra={"max_id", "model_fingerprint", "relabel_seq"}``. At
  start the snapshot is loaded and reconciled with SQLite (rows missing from it are added from their
  stored vectors, ids no longer in SQLite are removed); a missing, corrupt or mismatched
  snapshot is rebuilt from the stored vectors. Nothing is re-embedded at start.
* **Write path** (one lock): originals on disk → rows committed in one transaction (fsync)
  → vectors added to FAISS → 200. A 200 from ``POST /index`` means the rows are durable.
  **Delete**: row deleted (commit) → removed from FAISS → original unlinked.
  **Relabel**: row updated and its id logged in ``relabels`` (one commit) → moved to the
  new label's sub-index. A snapshot records the last ``relabels.seq`` it includes, so at
  start the ids relabelled after it are moved too (same ids, new label: an id comparison
  alone would not see them).
* **Deletions are logged** (schema version 3): a trigger writes every deleted id to
  ``deletions`` in the deleting transaction. With ``relabels`` and the ids (given in commit
  order), that is the change feed (:meth:`Store.changes_since`) by which each worker of
  ``cbmir serve --workers N`` keeps its own index in step (:mod:`app.service.workers`).
* ``DATA_DIR/.lock`` (``fcntl.flock``) is held while serving or bulk-indexing, so two
  processes never write the same data directory (under ``--workers N``: held by the
  supervisor, whose workers serialise their writes on ``DATA_DIR/.write.lock``).
"""

from __future__ import annotations

import errno
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np

from app.service.atomic import write_atomically
from app.service.errors import StorageFull
from app.service.faults import NO_FAULTS, Faults

log = logging.getLogger(__name__)

DB_FILE = "cbmir.sqlite3"
ORIGINALS = "originals"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256 TEXT NOT NULL UNIQUE,
    label TEXT NOT NULL,
    label_source TEXT NOT NULL CHECK (label_source IN ('given', 'predicted')),
    content_type TEXT NOT NULL,
    format TEXT NOT NULL,
    metadata TEXT NOT NULL,
    vector BLOB NOT NULL,
    created_at TEXT NOT NULL,
    in_distribution INTEGER CHECK (in_distribution IN (0, 1))
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS relabels (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id INTEGER NOT NULL
);
"""
# Version 3: every deleted id is logged (by a trigger, in the deleting transaction), so
# the other processes of `cbmir serve --workers N` can remove it from their indexes.
_DELETIONS = """
CREATE TABLE IF NOT EXISTS deletions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS items_deleted AFTER DELETE ON items
BEGIN INSERT INTO deletions (item_id) VALUES (old.id); END;
"""
SCHEMA_VERSION = 3
# Added by version 2 (name, SQL type); the DICOM identity and where an item came from.
_V2_COLUMNS = (
    ("study_uid", "TEXT"), ("series_uid", "TEXT"), ("sop_uid", "TEXT"), ("frame", "INTEGER"),
    ("modality", "TEXT"), ("body_part", "TEXT"), ("series_description", "TEXT"),
    ("instance_number", "INTEGER"), ("wado_url", "TEXT"),
    ("stored_as", "TEXT NOT NULL DEFAULT 'original'"),
)
_DICOM_FIELDS = ("study_uid", "series_uid", "sop_uid", "frame", "modality", "body_part",
                 "series_description", "instance_number")
_COLUMNS = ("id, sha256, label, label_source, content_type, format, metadata, created_at, "
            "in_distribution, " + ", ".join(name for name, _ in _V2_COLUMNS))
_INDEXES = """
CREATE UNIQUE INDEX IF NOT EXISTS items_sop ON items (sop_uid, frame) WHERE sop_uid IS NOT NULL;
CREATE INDEX IF NOT EXISTS items_study ON items (study_uid) WHERE study_uid IS NOT NULL;
CREATE INDEX IF NOT EXISTS items_series ON items (series_uid) WHERE series_uid IS NOT NULL;
"""


LabelSource = Literal["given", "predicted"]
StoredAs = Literal["original", "deidentified", "rendering"]


@dataclass(frozen=True)
class DicomFields:
    """What identifies a DICOM item and what a person looks for first; never a patient
    field. ``frame`` is 1-based (the frame the image was made from)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    frame: int = 1
    modality: str | None = None
    body_part: str | None = None
    series_description: str | None = None
    instance_number: int | None = None

    @property
    def key(self) -> tuple[str, int]:
        return self.sop_uid, self.frame


class StoreMismatchError(ValueError):
    """The data directory was filled with another model's descriptors."""


@dataclass(frozen=True)
class Item:
    id: int
    sha256: str
    label: str
    label_source: LabelSource
    content_type: str
    format: str
    metadata: dict[str, Any]
    created_at: str
    in_distribution: bool | None = None
    dicom: DicomFields | None = None
    wado_url: str | None = None
    stored_as: StoredAs = "original"


class InsertedIds(list[int]):
    """The ids :meth:`insert` gave, in order. ``existing``: those of items another writer
    committed between our lookup and our insert (another replica of the shared backend,
    same bytes or SOP instance at the same moment); they are duplicates, not new."""

    def __init__(self, ids: Sequence[int] = (), existing: Sequence[int] = ()) -> None:
        super().__init__(ids)
        self.existing = set(existing)


@dataclass(frozen=True)
class NewItem:
    sha256: str
    data: bytes = field(repr=False)
    label: str
    label_source: LabelSource
    content_type: str
    format: str
    metadata: dict[str, Any]
    vector: np.ndarray = field(repr=False)
    in_distribution: bool | None = None
    dicom: DicomFields | None = None
    wado_url: str | None = None
    stored_as: StoredAs = "original"


def _row_to_item(row: tuple[Any, ...]) -> Item:
    source = cast(LabelSource, row[3])
    ood = None if row[8] is None else bool(row[8])
    study, series, sop, frame, modality, body, desc, number, wado, stored = row[9:19]
    dicom = DicomFields(study or "", series or "", sop, int(frame or 1), modality, body, desc,
                        number) if sop else None
    return Item(row[0], row[1], row[2], source, row[4], row[5], json.loads(row[6]), row[7], ood,
                dicom, wado, cast(StoredAs, stored or "original"))


def _migrate(db: sqlite3.Connection) -> None:
    """Columns added since a store was made; their old rows read NULL (not checked)."""
    have = {r[1] for r in db.execute("PRAGMA table_info(items)")}
    if "in_distribution" not in have:
        db.execute("ALTER TABLE items ADD COLUMN in_distribution INTEGER "
                   "CHECK (in_distribution IN (0, 1))")
        log.info("store: added column in_distribution (existing rows: NULL)")
    if "sop_uid" not in have:
        _migrate_v2(db)
    db.executescript(_INDEXES + _DELETIONS)
    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
               (str(SCHEMA_VERSION),))


def _migrate_v2(db: sqlite3.Connection) -> None:
    """The DICOM columns, filled from the metadata JSON that version 1 kept them in. Of
    several old rows of one SOP instance, the oldest keeps the SOP UID (the key is unique);
    the others keep their study and series."""
    db.execute("BEGIN IMMEDIATE")
    try:
        for name, sql_type in _V2_COLUMNS:
            db.execute(f"ALTER TABLE items ADD COLUMN {name} {sql_type}")
        db.execute("""
            UPDATE items SET
              study_uid = NULLIF(json_extract(metadata, '$.study_instance_uid'), ''),
              series_uid = NULLIF(json_extract(metadata, '$.series_instance_uid'), ''),
              modality = NULLIF(json_extract(metadata, '$.modality'), ''),
              body_part = NULLIF(json_extract(metadata, '$.body_part'), ''),
              frame = CASE WHEN json_extract(metadata, '$.frames') > 1
                           THEN json_extract(metadata, '$.frames') / 2 + 1 ELSE 1 END
            WHERE format = 'dicom'""")
        db.execute("""
            UPDATE items SET sop_uid = json_extract(metadata, '$.sop_instance_uid')
            WHERE format = 'dicom' AND NULLIF(json_extract(metadata, '$.sop_instance_uid'), '')
                  IS NOT NULL
              AND id = (SELECT MIN(o.id) FROM items o WHERE o.format = 'dicom'
                        AND json_extract(o.metadata, '$.sop_instance_uid')
                            = json_extract(items.metadata, '$.sop_instance_uid'))""")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    log.info("store: schema version 2 (DICOM identity columns, filled from metadata)")


def _is_disk_full(e: BaseException) -> bool:
    """ENOSPC/EDQUOT from the file system, or SQLite's SQLITE_FULL (13)."""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(e, sqlite3.Error) and getattr(e, "sqlite_errorcode", None) == 13


class Store:
    """Thread-safe: writes (and rare reads) share one connection behind a lock; the reads
    of every request (:meth:`get_many`, :meth:`find_sha`) use a connection per thread, so
    concurrent searches do not queue on that lock (WAL lets readers run beside a writer).
    """

    def __init__(self, data_dir: Path, faults: Faults = NO_FAULTS) -> None:
        self.data_dir = Path(data_dir)
        self.faults = faults  # test-only fault points (app.service.faults)
        self.originals = self.data_dir / ORIGINALS
        self.originals.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        # Autocommit mode; transactions are explicit (BEGIN IMMEDIATE ... COMMIT).
        self._db = sqlite3.connect(
            self.data_dir / DB_FILE, check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        _migrate(self._db)
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._feed_conn: sqlite3.Connection | None = None
        self._feed_lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for conn in self._readers:
                conn.close()
            self._db.close()

    def _reader(self) -> sqlite3.Connection:
        """This thread's read-only connection (opened on first use)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            with self._lock:
                if self._closed:
                    raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
                # check_same_thread=False only so close() may close it from another thread.
                conn = sqlite3.connect(
                    f"file:{self.data_dir / DB_FILE}?mode=ro", uri=True,
                    check_same_thread=False, isolation_level=None,
                )
                self._readers.append(conn)
            self._local.conn = conn
        return conn

    # -- model identity --------------------------------------------------------------

    def meta(self) -> dict[str, str]:
        with self._lock:
            return dict(self._db.execute("SELECT key, value FROM meta").fetchall())

    def check_model(self, fingerprint: str, dim: int, name: str) -> None:
        """Refuse a model other than the one that produced the stored vectors."""
        meta = self.meta()
        if self.count() and meta and (
            meta.get("model_fingerprint") != fingerprint or int(meta["embedding_dim"]) != dim
        ):
            raise StoreMismatchError(
                f"data directory {self.data_dir} holds {self.count()} images embedded by model "
                f"{meta.get('model_name')!r} (fingerprint {meta.get('model_fingerprint')}, "
                f"dim {meta.get('embedding_dim')}), not the loaded model {name!r} (fingerprint "
                f"{fingerprint}, dim {dim}): set CBMIR_DATA_DIR to a new directory, or delete "
                "this one and re-index with `cbmir index`"
            )
        values = {"model_fingerprint": fingerprint, "embedding_dim": str(dim), "model_name": name}
        with self._lock:
            self._db.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", values.items()
            )

    # -- reads -------------------------------------------------------------------------

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    def max_id(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT MAX(id) FROM items").fetchone()
        return int(row[0] or 0)

    def ids(self) -> np.ndarray:
        with self._lock:
            cur = self._db.execute("SELECT id FROM items ORDER BY id")
            return np.fromiter((r[0] for r in cur), dtype=np.int64)

    def get(self, item_id: int) -> Item | None:
        return self.get_many([item_id]).get(item_id)

    def get_many(self, ids: Sequence[int]) -> dict[int, Item]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self._reader().execute(
            f"SELECT {_COLUMNS} FROM items WHERE id IN ({marks})", [int(i) for i in ids]
        ).fetchall()
        return {r[0]: _row_to_item(r) for r in rows}

    def find_sha(self, shas: Sequence[str]) -> dict[str, Item]:
        if not shas:
            return {}
        marks = ",".join("?" * len(shas))
        rows = self._reader().execute(
            f"SELECT {_COLUMNS} FROM items WHERE sha256 IN ({marks})", list(shas)
        ).fetchall()
        return {r[1]: _row_to_item(r) for r in rows}

    def find_sop(self, keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], Item]:
        """Stored DICOM items by (SOP Instance UID, frame)."""
        if not keys:
            return {}
        found: dict[tuple[str, int], Item] = {}
        sops = sorted({sop for sop, _ in keys})
        for s in range(0, len(sops), 500):
            part = sops[s : s + 500]
            rows = self._reader().execute(
                f"SELECT {_COLUMNS} FROM items WHERE sop_uid IN ({','.join('?' * len(part))})",
                part,
            ).fetchall()
            for r in rows:
                item = _row_to_item(r)
                assert item.dicom is not None
                found[item.dicom.key] = item
        wanted = set(keys)
        return {k: v for k, v in found.items() if k in wanted}

    def sops_of_series(self, series_uid: str) -> set[str]:
        rows = self._reader().execute(
            "SELECT sop_uid FROM items WHERE series_uid = ? AND sop_uid IS NOT NULL",
            (series_uid,)).fetchall()
        return {r[0] for r in rows}

    def vectors(
        self, dim: int, ids: np.ndarray | None = None, chunk: int = 4096
    ) -> Iterator[tuple[np.ndarray, np.ndarray, list[str]]]:
        """(ids, float32 vectors, labels) in chunks: of all rows, or of ``ids`` only."""
        if ids is None:
            last = 0
            while True:
                with self._lock:
                    rows = self._db.execute(
                        "SELECT id, vector, label FROM items WHERE id > ? ORDER BY id LIMIT ?",
                        (last, chunk),
                    ).fetchall()
                if not rows:
                    return
                last = rows[-1][0]
                yield self._unpack(rows, dim)
        else:
            for s in range(0, len(ids), chunk):
                part = [int(i) for i in ids[s : s + chunk]]
                with self._lock:
                    rows = self._db.execute(
                        f"SELECT id, vector, label FROM items WHERE id IN "
                        f"({','.join('?' * len(part))}) ORDER BY id",
                        part,
                    ).fetchall()
                if rows:
                    yield self._unpack(rows, dim)

    @staticmethod
    def _unpack(rows: list[Any], dim: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        if not rows:
            return np.empty(0, np.int64), np.empty((0, dim), np.float32), []
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), dim)
        return ids, vecs.astype(np.float32), [r[2] for r in rows]

    def original_path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError("invalid sha256")  # never build a path from anything else
        return self.originals / sha256[:2] / sha256

    def read_original(self, item: Item) -> bytes | None:
        try:
            return self.original_path(item.sha256).read_bytes()
        except FileNotFoundError:
            log.error("original of item %d is missing from %s", item.id, self.originals)
            return None

    # -- writes ------------------------------------------------------------------------

    def _write_original(self, sha256: str, data: bytes) -> bool:
        """Store the bytes; False if they were already there (written by someone else)."""
        path = self.original_path(sha256)
        if path.is_file() and path.stat().st_size == len(data):
            return False  # content-addressed: an orphan left by a crash holds these bytes
        path.parent.mkdir(exist_ok=True)
        write_atomically(path, data, midway=lambda: self.faults.hit("disk_full"))
        return True

    def insert(self, items: Sequence[NewItem]) -> InsertedIds:
        """Write originals, then every row in one transaction; returns the new ids.

        All or nothing: on any failure the transaction is rolled back and the originals
        this call wrote are removed again. A full disk raises :class:`StorageFull`.
        """
        written: list[str] = []
        try:
            for it in items:
                if self._write_original(it.sha256, it.data):
                    written.append(it.sha256)
            return self._insert_rows(items)
        except BaseException as e:
            for sha in written:
                self.unlink_original(sha)
            if _is_disk_full(e):
                raise StorageFull(
                    "the data directory's disk is full: nothing of this request was stored"
                ) from e
            raise

    def _insert_rows(self, items: Sequence[NewItem]) -> InsertedIds:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        ids: list[int] = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for it in items:
                    d = it.dicom
                    dicom = (tuple(getattr(d, f) for f in _DICOM_FIELDS) if d is not None
                             else (None,) * len(_DICOM_FIELDS))
                    cur = self._db.execute(
                        "INSERT INTO items (sha256, label, label_source, content_type, format,"
                        " metadata, vector, created_at, in_distribution, "
                        + ", ".join(_DICOM_FIELDS) + ", wado_url, stored_as)"
                        " VALUES (" + ",".join("?" * (11 + len(_DICOM_FIELDS))) + ")",
                        (it.sha256, it.label, it.label_source, it.content_type, it.format,
                         json.dumps(it.metadata), it.vector.astype("<f4").tobytes(), now,
                         None if it.in_distribution is None else int(it.in_distribution),
                         *dicom, it.wado_url, it.stored_as),
                    )
                    ids.append(int(cur.lastrowid or 0))
                self._db.execute("COMMIT")
            except BaseException:
                # A failed COMMIT may already have ended the transaction.
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        return InsertedIds(ids)

    def delete(self, item_id: int) -> Item | None:
        """Delete the row (committed on return); the caller unlinks the original after."""
        with self._lock:
            item = self.get(item_id)
            if item is not None:
                self._db.execute("DELETE FROM items WHERE id = ?", (item_id,))
        return item

    def delete_where(self, filt: ItemFilter) -> list[Item]:
        """Delete every row matching ``filt`` in one commit; the caller unlinks after."""
        where, params = filt.clauses()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute(
                    f"SELECT {_COLUMNS} FROM items WHERE {where}", params).fetchall()
                self._db.execute(f"DELETE FROM items WHERE {where}", params)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        return [_row_to_item(r) for r in rows]

    def unlink_original(self, sha256: str) -> None:
        self.original_path(sha256).unlink(missing_ok=True)

    def clean_orphans(self) -> int:
        """Remove originals without a row and temporary files left by a crash."""
        with self._lock:
            known = {r[0] for r in self._db.execute("SELECT sha256 FROM items")}
        removed = 0
        for path in self.originals.glob("*/*"):
            if path.name not in known and path.is_file():
                path.unlink(missing_ok=True)
                removed += 1
        if removed:
            log.info("removed %d orphaned original file(s)", removed)
        return removed

    # -- the gallery list (GET /images) and curation (PATCH /images/{id}) -------------

    def list_items(
        self, filt: ItemFilter, before: int | None, limit: int
    ) -> tuple[list[Item], int]:
        """Up to ``limit`` rows matching ``filt``, newest first, with ids below ``before``;
        and how many rows match ``filt`` in all."""
        where, params = filt.clauses()
        page_where = f"({where}) AND id < ?" if before is not None else where
        page_params = [*params, before] if before is not None else params
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM items WHERE {page_where} ORDER BY id DESC LIMIT ?",
                [*page_params, limit],
            ).fetchall()
            total = int(self._db.execute(
                f"SELECT COUNT(*) FROM items WHERE {where}", params
            ).fetchone()[0])
        return [_row_to_item(r) for r in rows], total

    def relabel(self, item_id: int, label: str) -> Item | None:
        """Give the row a curated label (source ``given``) and log its id in ``relabels``,
        in one transaction; ``None`` when there is no such row."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cur = self._db.execute(
                    "UPDATE items SET label = ?, label_source = 'given' WHERE id = ?",
                    (label, item_id),
                )
                if cur.rowcount:
                    self._db.execute("INSERT INTO relabels (item_id) VALUES (?)", (item_id,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return self.get(item_id)

    def relabel_seq(self) -> int:
        """The last relabel's sequence number (0: none yet)."""
        with self._lock:
            row = self._db.execute("SELECT MAX(seq) FROM relabels").fetchone()
        return int(row[0] or 0)

    def relabelled_since(self, seq: int) -> np.ndarray:
        """Ids relabelled after sequence number ``seq`` (some may be deleted since)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT item_id FROM relabels WHERE seq > ? ORDER BY item_id", (seq,)
            ).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)


    # -- the change feed of `cbmir serve --workers N` (app.service.workers) -------------

    def _feed(self) -> sqlite3.Connection:
        """The feed's own read-only connection (callers hold ``_feed_lock``): its
        ``PRAGMA data_version`` changes exactly when another connection committed."""
        if self._feed_conn is None:
            with self._lock:
                if self._closed:
                    raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
                self._feed_conn = sqlite3.connect(
                    f"file:{self.data_dir / DB_FILE}?mode=ro", uri=True,
                    check_same_thread=False, isolation_level=None,
                )
                self._readers.append(self._feed_conn)
        return self._feed_conn

    def data_version(self) -> int:
        """A number that changes whenever any connection (this process's writer included)
        has committed since the last call; one ``PRAGMA``, a few microseconds."""
        with self._feed_lock:
            return int(self._feed().execute("PRAGMA data_version").fetchone()[0])

    def cursor(self) -> ChangeCursor:
        """Where the change feed stands now (for :meth:`changes_since`)."""
        with self._feed_lock:
            return self._cursor_locked(self._feed())

    @staticmethod
    def _cursor_locked(db: sqlite3.Connection) -> ChangeCursor:
        row = db.execute(
            "SELECT (SELECT MAX(id) FROM items), (SELECT MAX(seq) FROM deletions), "
            "(SELECT MAX(seq) FROM relabels), (SELECT seq FROM sqlite_sequence "
            "WHERE name = 'items')").fetchone()
        # The items sequence, not MAX(id): an id given and deleted since is still used.
        return ChangeCursor(int(row[3] or row[0] or 0), int(row[1] or 0), int(row[2] or 0))

    def changes_since(self, cursor: ChangeCursor, dim: int) -> Changes:
        """Everything committed after ``cursor``, read in one transaction: rows added
        (ids are given in commit order: SQLite has one writer at a time), ids deleted,
        and the rows relabelled (with their current label; deleted ones are absent; some
        may be among the added too)."""
        with self._feed_lock:
            db = self._feed()
            db.execute("BEGIN")
            try:
                now = self._cursor_locked(db)
                added = db.execute(
                    "SELECT id, vector, label FROM items WHERE id > ? ORDER BY id",
                    (cursor.item_id,)).fetchall()
                deleted = db.execute(
                    "SELECT DISTINCT item_id FROM deletions WHERE seq > ? AND seq <= ?",
                    (cursor.deletion_seq, now.deletion_seq)).fetchall()
                # Whatever their id: a row this process added itself, not yet past its
                # cursor, may have been relabelled by another since.
                relabelled = db.execute(
                    "SELECT id, vector, label FROM items WHERE id IN (SELECT item_id FROM "
                    "relabels WHERE seq > ? AND seq <= ?) ORDER BY id",
                    (cursor.relabel_seq, now.relabel_seq)).fetchall()
            finally:
                db.execute("COMMIT")
        return Changes(now, self._unpack(added, dim),
                       np.array(sorted(r[0] for r in deleted), dtype=np.int64),
                       self._unpack(relabelled, dim))


@dataclass(frozen=True)
class ChangeCursor:
    """How far a process has followed the store: the last item id given, the last
    deletion and the last relabel (their ``seq``)."""

    item_id: int = 0
    deletion_seq: int = 0
    relabel_seq: int = 0


@dataclass(frozen=True)
class Changes:
    """What :meth:`Store.changes_since` read: (ids, vectors, labels) of the rows added and
    of those relabelled, the ids deleted, and the cursor they bring a follower to."""

    cursor: ChangeCursor
    added: tuple[np.ndarray, np.ndarray, list[str]]
    deleted: np.ndarray
    relabelled: tuple[np.ndarray, np.ndarray, list[str]]

    @property
    def empty(self) -> bool:
        return not (len(self.added[0]) or len(self.deleted) or len(self.relabelled[0]))


@dataclass(frozen=True)
class ItemFilter:
    """What a list of stored items is narrowed to; ``None`` is "any".

    A new filter is a field here and a clause in :meth:`clauses`.
    """

    label: str | None = None
    label_source: LabelSource | None = None
    # The DICOM modality column, else metadata.modality (given with an upload); any case.
    modality: str | None = None
    in_distribution: bool | None = None  # rows never checked (NULL) match neither value
    study_uid: str | None = None
    series_uid: str | None = None
    sop_uid: str | None = None

    @property
    def empty(self) -> bool:
        return all(v is None for v in vars(self).values())

    def clauses(self) -> tuple[str, list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        if self.label is not None:
            where.append("label = ?")
            params.append(self.label)
        if self.label_source is not None:
            where.append("label_source = ?")
            params.append(self.label_source)
        if self.modality is not None:
            where.append("COALESCE(modality, json_extract(metadata, '$.modality')) = ?"
                         " COLLATE NOCASE")
            params.append(self.modality)
        for name in ("study_uid", "series_uid", "sop_uid"):
            value = getattr(self, name)
            if value is not None:
                where.append(f"{name} = ?")
                params.append(value)
        if self.in_distribution is not None:
            where.append("in_distribution = ?")
            params.append(int(self.in_distribution))
        return " AND ".join(where) or "1", params
