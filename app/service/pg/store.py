"""The item store on PostgreSQL (:class:`~app.service.backend.ItemStore`): rows, vectors
and originals in one database that any number of replicas share.

See :mod:`app.service.pg.schema` for the layout. The promises:

* **One transaction per write.** ``insert`` writes the rows, their vectors and their
  originals in one transaction; a lost connection before its commit leaves nothing (the
  request answers 503 and the client retries). The 200 follows the commit, so the write is
  visible to a search through any replica on the primary from then on.
* **Stored once across replicas.** ``sha256`` and ``sop_uid`` are unique in ``items``;
  ``INSERT ... ON CONFLICT DO NOTHING`` lets a second replica that received the same bytes
  at the same moment wait for the first one's commit and then take its row's id.
* **The model check** reads and writes ``meta`` under the schema's advisory lock.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import numpy as np

from app.service.pg.db import check_reachable, open_pool, redact, unavailable_as_503
from app.service.pg.schema import DICOM_COLUMNS, LOCK_KEY, ensure_hnsw, ensure_schema
from app.service.store import (
    DicomFields,
    InsertedIds,
    Item,
    ItemFilter,
    LabelSource,
    NewItem,
    StoredAs,
    StoreMismatchError,
)

log = logging.getLogger(__name__)

_COLUMNS = ("id, sha256, label, label_source, content_type, format, metadata, "
            "to_char(created AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), "
            "in_distribution, " + ", ".join(DICOM_COLUMNS) + ", stored_as")


def _item(row: Sequence[Any]) -> Item:
    study, series, sop, frame, modality, body, desc, number, wado, stored = row[9:19]
    dicom = DicomFields(study or "", series or "", sop, int(frame or 1), modality, body, desc,
                        number) if sop else None
    return Item(int(row[0]), row[1], row[2], cast(LabelSource, row[3]), row[4], row[5],
                row[6], row[7], row[8], dicom, wado, cast(StoredAs, stored or "original"))


def _dicom_values(it: NewItem) -> list[Any]:
    """The values of :data:`DICOM_COLUMNS` for a new item (None where not DICOM)."""
    d = it.dicom
    fields = [None] * 8 if d is None else [
        d.study_uid, d.series_uid, d.sop_uid, d.frame, d.modality, d.body_part,
        d.series_description, d.instance_number]
    return [*fields, it.wado_url]


def _array(v: Any) -> np.ndarray:
    """pgvector's ``Vector`` (or an array, in older pgvector) as float32."""
    return np.asarray(v.to_numpy() if hasattr(v, "to_numpy") else v, dtype=np.float32)


class PgStore:
    """Thread-safe: every call borrows a pooled connection for one transaction."""

    backend = "postgresql"

    def __init__(self, url: str, *, pool_size: int = 10, timeout_s: float = 5.0,
                 session_sql: str = "") -> None:
        self.url = url
        self.display_url = redact(url)
        self._others: list[Any] = []
        self.hnsw_thread: threading.Thread | None = None
        check_reachable(url, timeout_s)
        try:
            self.pool = open_pool(url, size=pool_size, timeout_s=timeout_s,
                                  session_sql=session_sql)
        except Exception as e:
            raise ValueError(f"cannot connect to the database {self.display_url}: "
                             f"{(str(e).splitlines() or [type(e).__name__])[0]}") from None

    def close(self) -> None:
        for pool in [self.pool, *self._others]:
            pool.close()

    def also_close(self, pool: Any) -> None:
        """Close ``pool`` (a read replica's) with this store."""
        self._others.append(pool)

    @contextmanager
    def _conn(self, what: str, *, tx: bool = False) -> Iterator[Any]:
        """A pooled connection (autocommit; in one transaction with ``tx``); a lost or
        unreachable database raises :class:`~app.service.pg.db.DatabaseUnavailable`."""
        with unavailable_as_503(what, self.pool), self.pool.connection() as conn:
            if tx:
                with conn.transaction():
                    yield conn
            else:
                yield conn

    def setup(self, dim: int, labels: Sequence[str], *, hnsw: bool) -> None:
        """Create or migrate the schema (under the advisory lock); with ``hnsw``, build
        the missing HNSW indexes concurrently in a background thread (see ``schema``)."""
        with self._conn("schema") as conn:
            ensure_schema(conn, dim, labels)
        if hnsw:
            self.hnsw_thread = threading.Thread(target=self._build_hnsw, args=(list(labels),),
                                                name="cbmir-pg-hnsw", daemon=True)
            self.hnsw_thread.start()

    def _build_hnsw(self, labels: list[str]) -> None:
        try:
            with self.pool.connection() as conn:
                ensure_hnsw(conn, labels)
        except Exception:  # searches stay exact (a scan) until a later start builds them
            log.exception("building the HNSW indexes failed")

    # -- model identity --------------------------------------------------------------

    def meta(self) -> dict[str, str]:
        with self._conn("read") as conn:
            return dict(conn.execute("SELECT key, value FROM meta").fetchall())

    def check_model(self, fingerprint: str, dim: int, name: str) -> None:
        values = {"model_fingerprint": fingerprint, "embedding_dim": str(dim), "model_name": name}
        with self._conn("model check", tx=True) as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            count = int(conn.execute("SELECT count(*) FROM items").fetchone()[0])
            if count and meta and (meta.get("model_fingerprint") != fingerprint
                                   or int(meta["embedding_dim"]) != dim):
                raise StoreMismatchError(
                    f"database {self.display_url} holds {count} images embedded by model "
                    f"{meta.get('model_name')!r} (fingerprint {meta.get('model_fingerprint')}, "
                    f"dim {meta.get('embedding_dim')}), not the loaded model {name!r} "
                    f"(fingerprint {fingerprint}, dim {dim}): point CBMIR_DATABASE_URL at "
                    "another database, or empty this one and re-index")
            for k, v in values.items():
                conn.execute("INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) "
                             "DO UPDATE SET value = EXCLUDED.value", (k, v))

    # -- reads -------------------------------------------------------------------------

    def _one(self, query: str, params: Sequence[Any] = ()) -> Any:
        with self._conn("read") as conn:
            return conn.execute(query, params).fetchone()[0]

    def count(self) -> int:
        return int(self._one("SELECT count(*) FROM items"))

    def max_id(self) -> int:
        return int(self._one("SELECT coalesce(max(id), 0) FROM items"))

    def ids(self) -> np.ndarray:
        with self._conn("read") as conn:
            rows = conn.execute("SELECT id FROM items ORDER BY id").fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def get(self, item_id: int) -> Item | None:
        return self.get_many([item_id]).get(item_id)

    def get_many(self, ids: Sequence[int]) -> dict[int, Item]:
        if not len(ids):
            return {}
        with self._conn("read") as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM items WHERE id = ANY(%s)",
                                ([int(i) for i in ids],)).fetchall()
        return {int(r[0]): _item(r) for r in rows}

    def find_sha(self, shas: Sequence[str]) -> dict[str, Item]:
        if not shas:
            return {}
        with self._conn("read") as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM items WHERE sha256 = ANY(%s)",
                                (list(shas),)).fetchall()
        return {r[1]: _item(r) for r in rows}

    def find_sop(self, keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], Item]:
        """Stored DICOM items by (SOP Instance UID, frame)."""
        if not keys:
            return {}
        with self._conn("read") as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM items WHERE sop_uid = ANY(%s)",
                                (sorted({sop for sop, _ in keys}),)).fetchall()
        wanted = set(keys)
        found = {item.dicom.key: item for item in map(_item, rows) if item.dicom is not None}
        return {k: v for k, v in found.items() if k in wanted}

    def sops_of_series(self, series_uid: str) -> set[str]:
        with self._conn("read") as conn:
            rows = conn.execute("SELECT sop_uid FROM items WHERE series_uid = %s AND "
                                "sop_uid IS NOT NULL", (series_uid,)).fetchall()
        return {r[0] for r in rows}

    def vectors(
        self, dim: int, ids: np.ndarray | None = None, chunk: int = 4096
    ) -> Iterator[tuple[np.ndarray, np.ndarray, list[str]]]:
        """(ids, float32 vectors, labels) in chunks: of all rows, or of ``ids`` only."""
        def unpack(rows: list[Any]) -> tuple[np.ndarray, np.ndarray, list[str]]:
            vecs = np.stack([_array(r[1]) for r in rows])
            return np.array([r[0] for r in rows], np.int64), vecs, [r[2] for r in rows]

        if ids is None:
            last = 0
            while True:
                with self._conn("read") as conn:
                    rows = conn.execute(
                        "SELECT id, vector, label FROM item_vectors WHERE id > %s "
                        "ORDER BY id LIMIT %s", (last, chunk)).fetchall()
                if not rows:
                    return
                last = int(rows[-1][0])
                yield unpack(rows)
        else:
            for s in range(0, len(ids), chunk):
                part = [int(i) for i in ids[s : s + chunk]]
                with self._conn("read") as conn:
                    rows = conn.execute(
                        "SELECT id, vector, label FROM item_vectors WHERE id = ANY(%s) "
                        "ORDER BY id", (part,)).fetchall()
                if rows:
                    yield unpack(rows)

    def read_original(self, item: Item) -> bytes | None:
        with self._conn("read") as conn:
            row = conn.execute("SELECT data FROM originals WHERE sha256 = %s",
                               (item.sha256,)).fetchone()
        if row is None:
            log.error("original of item %d is missing from the database", item.id)
            return None
        return bytes(row[0])

    # -- writes ------------------------------------------------------------------------

    def insert(self, items: Sequence[NewItem]) -> InsertedIds:
        """Rows, vectors and originals in one transaction; the ids, in order.

        An item whose sha256 (or SOP Instance UID) another replica committed meanwhile
        resolves to that row's id and writes nothing."""
        ids: list[int] = []
        existing: list[int] = []
        with self._conn("write", tx=True) as conn:
            for it in items:
                dicom = _dicom_values(it)
                row = conn.execute(
                    "INSERT INTO items (sha256, label, label_source, content_type, format, "
                    "metadata, in_distribution, " + ", ".join(DICOM_COLUMNS) + ", stored_as) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s" + ", %s" * len(DICOM_COLUMNS)
                    + ", %s) ON CONFLICT DO NOTHING RETURNING id",
                    (it.sha256, it.label, it.label_source, it.content_type, it.format,
                     json.dumps(it.metadata), it.in_distribution, *dicom, it.stored_as),
                ).fetchone()
                if row is None:  # stored meanwhile (another replica, same bytes or SOP UID)
                    ids.append(int(conn.execute(
                        "SELECT id FROM items WHERE sha256 = %s OR (sop_uid IS NOT NULL AND "
                        "sop_uid = %s AND frame = %s) ORDER BY id LIMIT 1",
                        (it.sha256, dicom[2], dicom[3])).fetchone()[0]))
                    existing.append(ids[-1])
                    continue
                item_id = int(row[0])
                conn.execute("INSERT INTO item_vectors (label, id, vector) VALUES (%s, %s, %s)",
                             (it.label, item_id, np.asarray(it.vector, np.float32)))
                conn.execute("INSERT INTO originals (sha256, data) VALUES (%s, %s)",
                             (it.sha256, it.data))
                ids.append(item_id)
        return InsertedIds(ids, existing)

    def delete(self, item_id: int) -> Item | None:
        """Row, vector and original in one statement (cascades), committed on return."""
        with self._conn("delete", tx=True) as conn:
            row = conn.execute(f"DELETE FROM items WHERE id = %s RETURNING {_COLUMNS}",
                               (item_id,)).fetchone()
        return None if row is None else _item(row)

    def delete_where(self, filt: ItemFilter) -> list[Item]:
        """Every row matching ``filt`` (vectors and originals cascade), one transaction."""
        where, params = filter_clauses(filt)
        with self._conn("delete", tx=True) as conn:
            rows = conn.execute(f"DELETE FROM items WHERE {where} RETURNING {_COLUMNS}",
                                params).fetchall()
        return [_item(r) for r in rows]

    def unlink_original(self, sha256: str) -> None:
        """Nothing to do: the original was deleted with its row."""

    def clean_orphans(self) -> int:
        """Nothing to do: an original commits and is deleted with its row."""
        return 0

    # -- the gallery list and curation -------------------------------------------------

    def list_items(
        self, filt: ItemFilter, before: int | None, limit: int
    ) -> tuple[list[Item], int]:
        where, params = filter_clauses(filt)
        page = f"{where} AND id < %s" if before is not None else where
        page_params = [*params, before] if before is not None else params
        with self._conn("read") as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM items WHERE {page} ORDER BY id DESC LIMIT %s",
                [*page_params, limit]).fetchall()
            total = int(conn.execute(f"SELECT count(*) FROM items WHERE {where}",
                                     params).fetchone()[0])
        return [_item(r) for r in rows], total

    def relabel(self, item_id: int, label: str) -> Item | None:
        """``items.label`` updated and the vector moved to its partition, one transaction."""
        with self._conn("relabel", tx=True) as conn:
            old = conn.execute("SELECT label FROM items WHERE id = %s FOR UPDATE",
                               (item_id,)).fetchone()
            if old is None:
                return None
            conn.execute("UPDATE items SET label = %s, label_source = 'given' WHERE id = %s",
                         (label, item_id))
            conn.execute("UPDATE item_vectors SET label = %s WHERE label = %s AND id = %s",
                         (label, old[0], item_id))
            row = conn.execute(f"SELECT {_COLUMNS} FROM items WHERE id = %s",
                               (item_id,)).fetchone()
        return _item(row)

    def relabel_seq(self) -> int:
        """No snapshot to reconcile: the vectors move in the relabel's transaction."""
        return 0

    def relabelled_since(self, seq: int) -> np.ndarray:
        return np.empty(0, np.int64)


def filter_clauses(filt: ItemFilter) -> tuple[str, list[Any]]:
    """``ItemFilter`` as SQL. Each field is a column of the same name, so the DICOM
    filters of issue 12 (``study_uid``, ``series_uid``, ``sop_uid``) need nothing here;
    ``modality`` matches the column or, for rows without it, ``metadata.modality``."""
    where: list[str] = []
    params: list[Any] = []
    for f in dataclasses.fields(filt):
        value = getattr(filt, f.name)
        if value is None:
            continue
        if f.name == "modality":
            where.append("upper(coalesce(modality, metadata->>'modality')) = upper(%s)")
        else:
            where.append(f"{f.name} = %s")
        params.append(value)
    return " AND ".join(where) or "TRUE", params
