"""The PostgreSQL schema, created and migrated by the service itself.

Layout: one identity table, vectors in LIST partitions by label
------------------------------------------------------------------
* ``items``: one row per image, not partitioned: ``id`` (identity, never reused),
  ``sha256`` **unique**, the DICOM identity and fields of issue 12 (``study_uid``,
  ``series_uid``, ``sop_uid`` **unique when present**, ``frame``, ``modality``,
  ``body_part``, ``series_description``, ``instance_number``, ``wado_url``; all nullable),
  ``label``, ``label_source``, ``content_type``, ``format``, ``metadata`` (JSONB),
  ``in_distribution``, ``created``.
* ``item_vectors``: ``(label, id, vector vector(d))``, ``PARTITION BY LIST (label)``, one
  partition per model class (plus a ``DEFAULT`` one), ``id`` a foreign key to ``items``
  with ``ON DELETE CASCADE``.
* ``originals``: ``(sha256, data bytea)``, cascading from ``items`` as well.

Why partitions and a separate identity table rather than one table with per-label partial
indexes: a class-restricted **exact** search (the default, and the paper's method) must
read only its class's vectors, which is what a FAISS sub-index per class gives the
embedded backend. In one table the rows of all classes share every heap page (they arrive
interleaved), so a ``WHERE label = $1`` scan reads the whole table, about 11x the I/O with
11 classes; partition pruning reads one partition, also for a generic prepared plan,
where a partial index whose predicate names a literal label would not be chosen.
PostgreSQL wants the partition key in every unique key of a partitioned table, so
``sha256`` and ``sop_uid`` cannot be unique across labels there: they live in ``items``,
which stays narrow (no vectors) and is what every lookup by id, hash or UID reads. An
insert writes both tables in one transaction; a relabel updates ``items.label`` and moves
the vector row to its new partition in one transaction.

Originals are ``bytea`` rows in the database rather than files in a shared directory:
the row and its bytes then commit (or roll back) together on every replica, with no
shared file system to mount on each API machine and no orphan sweep, which no replica
could run safely while another one is between writing a file and committing its row.
``STORAGE EXTERNAL``: stored out of line, uncompressed (image formats are compressed
already). The cost is database size and backup time; an object store is the step beyond.

Migrations: ``cbmir_schema`` holds the version; :func:`ensure_schema` creates or upgrades
it under a transaction-level advisory lock, so replicas starting together do it once.
A schema newer than this cbmir knows is refused.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
LOCK_KEY = 0x63626D6972  # "cbmir": pg_advisory_xact_lock key for schema work

DICOM_COLUMNS = ("study_uid", "series_uid", "sop_uid", "frame", "modality", "body_part",
                 "series_description", "instance_number", "wado_url")


class SchemaTooNewError(ValueError):
    """The database was made or migrated by a newer cbmir."""


def _v1(dim: int) -> list[str]:
    return [
        "CREATE EXTENSION IF NOT EXISTS vector",
        "CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL)",
        """CREATE TABLE items (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            sha256 text NOT NULL UNIQUE,
            study_uid text, series_uid text, sop_uid text, frame integer,
            modality text, body_part text, series_description text, instance_number integer,
            wado_url text,
            stored_as text NOT NULL DEFAULT 'original',
            label text NOT NULL,
            label_source text NOT NULL CHECK (label_source IN ('given', 'predicted')),
            content_type text NOT NULL,
            format text NOT NULL,
            metadata jsonb NOT NULL,
            in_distribution boolean,
            created timestamptz NOT NULL DEFAULT now()
        )""",
        # One item per SOP instance and frame (issue 12's DICOM identity), as in SQLite.
        "CREATE UNIQUE INDEX items_sop ON items (sop_uid, frame) WHERE sop_uid IS NOT NULL",
        "CREATE INDEX items_study_uid ON items (study_uid) WHERE study_uid IS NOT NULL",
        "CREATE INDEX items_series_uid ON items (series_uid) WHERE series_uid IS NOT NULL",
        "CREATE INDEX items_label ON items (label, id)",
        f"""CREATE TABLE item_vectors (
            label text NOT NULL,
            id bigint NOT NULL REFERENCES items (id) ON DELETE CASCADE,
            vector vector({int(dim)}) NOT NULL,
            -- (id, label), not (label, id): no btree serves "label = $1", so the planner
            -- picks between a scan of the partition and its HNSW index, never a btree
            -- walk of the whole partition followed by a sort.
            PRIMARY KEY (id, label)
        ) PARTITION BY LIST (label)""",
        "CREATE TABLE item_vectors_default PARTITION OF item_vectors DEFAULT",
        """CREATE TABLE originals (
            sha256 text PRIMARY KEY REFERENCES items (sha256) ON DELETE CASCADE,
            data bytea NOT NULL
        )""",
        "ALTER TABLE originals ALTER COLUMN data SET STORAGE EXTERNAL",
    ]


# version -> the statements that bring the schema from version - 1 to it. Version 1 is
# made from scratch; a later change is a new entry here (ALTER TABLE ...), never an edit.
MIGRATIONS: dict[int, Any] = {1: _v1}


def partition_name(label: str) -> str:
    """A stable identifier for a label's partition (labels may hold any character)."""
    return "item_vectors_" + hashlib.sha256(label.encode()).hexdigest()[:12]


def ensure_schema(conn: Any, dim: int, labels: Sequence[str], hnsw: bool = False,
                  hnsw_m: int = 16, ef_construction: int = 64) -> int:
    """Create or migrate the schema, one partition per label (and, with ``hnsw``, their
    HNSW indexes in this transaction: for a bulk load, not for a live database, where
    :func:`ensure_hnsw` builds them concurrently).

    Runs in one transaction under an advisory lock. Returns the schema version.
    """
    from psycopg import sql

    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        exists = conn.execute("SELECT to_regclass('cbmir_schema') IS NOT NULL").fetchone()[0]
        if not exists:
            conn.execute("CREATE TABLE cbmir_schema (version integer NOT NULL, "
                         "applied timestamptz NOT NULL DEFAULT now())")
            version = 0
        else:
            row = conn.execute("SELECT max(version) FROM cbmir_schema").fetchone()
            version = int(row[0] or 0)
        if version > SCHEMA_VERSION:
            raise SchemaTooNewError(
                f"the database schema is version {version}, made by a newer cbmir; this "
                f"cbmir knows versions up to {SCHEMA_VERSION}: upgrade cbmir (or point "
                "CBMIR_DATABASE_URL at another database)")
        for v in range(version + 1, SCHEMA_VERSION + 1):
            for stmt in MIGRATIONS[v](dim):
                conn.execute(stmt)
            conn.execute("INSERT INTO cbmir_schema (version) VALUES (%s)", (v,))
            log.info("database schema migrated to version %d", v)
        _resize_if_empty(conn, dim)
        for label in labels:
            name = partition_name(label)
            if conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()[0] is None:
                taken = conn.execute(
                    "SELECT 1 FROM item_vectors_default WHERE label = %s LIMIT 1", (label,)
                ).fetchone()
                if taken:
                    log.warning("label %r has rows in the default partition; left there", label)
                    continue
                conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF item_vectors FOR VALUES IN "
                                     "({})").format(sql.Identifier(name), sql.Literal(label)))
            if hnsw:
                conn.execute(sql.SQL(
                    "CREATE INDEX IF NOT EXISTS {} ON {} USING hnsw (vector vector_ip_ops) "
                    "WITH (m = {}, ef_construction = {})").format(
                    sql.Identifier(name + "_hnsw"), sql.Identifier(name),
                    sql.Literal(hnsw_m), sql.Literal(ef_construction)))
    return SCHEMA_VERSION


HNSW_LOCK_KEY = LOCK_KEY + 1  # session-level: one replica builds the HNSW indexes


def ensure_hnsw(conn: Any, labels: Sequence[str], hnsw_m: int = 16,
                ef_construction: int = 64) -> int:
    """Build each label partition's missing HNSW index with ``CREATE INDEX CONCURRENTLY``
    (writes go on meanwhile; searches scan exactly until it is valid). ``conn`` must be in
    autocommit. One replica at a time (a try-lock: the others go on without waiting);
    an index left invalid by a failed build is dropped and built again. Returns how many
    were built."""
    from psycopg import sql

    if not conn.execute("SELECT pg_try_advisory_lock(%s)", (HNSW_LOCK_KEY,)).fetchone()[0]:
        log.info("another replica is building the HNSW indexes")
        return 0
    built = 0
    try:
        for label in labels:
            part = partition_name(label)
            name = part + "_hnsw"
            if conn.execute("SELECT to_regclass(%s)", (part,)).fetchone()[0] is None:
                continue  # its rows are in the default partition
            valid = conn.execute(
                "SELECT i.indisvalid FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid "
                "WHERE c.relname = %s", (name,)).fetchone()
            if valid is not None and valid[0]:
                continue
            if valid is not None:
                conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(
                    sql.Identifier(name)))
            t0 = time.perf_counter()
            conn.execute(sql.SQL(
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON {} USING hnsw "
                "(vector vector_ip_ops) WITH (m = {}, ef_construction = {})").format(
                sql.Identifier(name), sql.Identifier(part), sql.Literal(hnsw_m),
                sql.Literal(ef_construction)))
            built += 1
            log.info("built the HNSW index of label %r in %.1fs", label,
                     time.perf_counter() - t0)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (HNSW_LOCK_KEY,))
    return built


def _resize_if_empty(conn: Any, dim: int) -> None:
    """An empty database may take a model of another width (the model check allows it)."""
    have = conn.execute(
        "SELECT atttypmod FROM pg_attribute WHERE attrelid = 'item_vectors'::regclass "
        "AND attname = 'vector'").fetchone()[0]
    if int(have) != dim and conn.execute("SELECT NOT EXISTS (SELECT 1 FROM items)").fetchone()[0]:
        conn.execute(f"ALTER TABLE item_vectors ALTER COLUMN vector TYPE vector({int(dim)})")


def hnsw_index_count(conn: Any) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_indexes WHERE tablename LIKE 'item_vectors%%' "
        "AND indexdef ILIKE '%%USING hnsw%%'").fetchone()
    return int(row[0])
