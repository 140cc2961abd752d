"""``cbmir migrate --to postgresql://...``: copy an embedded data dir (SQLite rows, their
stored vectors, the originals) into PostgreSQL, without re-embedding anything.

Ids are kept (clients may hold them; ``OVERRIDING SYSTEM VALUE``, then the identity
sequence is moved past them), so are labels, metadata, OOD verdicts and timestamps. The
DICOM columns are copied when the SQLite store has them. Each chunk is one transaction
with ``ON CONFLICT DO NOTHING``: an interrupted run is resumed by running it again. The
data dir is locked meanwhile (no ``cbmir serve`` may write it), and a database holding
another model's vectors is refused as at start-up.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import cast

import numpy as np
from tqdm import tqdm

from app.service.lock import DataDirLock
from app.service.pg.db import unavailable_as_503
from app.service.pg.schema import DICOM_COLUMNS
from app.service.pg.store import PgStore
from app.service.store import DB_FILE, Store

log = logging.getLogger(__name__)

CHUNK = 500


def migrate(data_dir: Path, url: str, *, labels: list[str] | None = None,
            progress: bool = True, chunk: int = CHUNK) -> dict[str, int | float]:
    """Copy ``data_dir`` into the database at ``url``; counts of copied and skipped rows."""
    if not (data_dir / DB_FILE).is_file():
        raise ValueError(f"{data_dir} holds no cbmir store ({DB_FILE})")
    t0 = time.perf_counter()
    lock = DataDirLock(data_dir).acquire()
    try:
        files = Store(data_dir)  # for the originals' paths; also migrates an old schema
        db = sqlite3.connect(f"file:{data_dir / DB_FILE}?mode=ro", uri=True)
        try:
            return _copy(db, files, url, labels or [], progress, chunk, t0)
        finally:
            db.close()
            files.close()
    finally:
        lock.release()


def _copy(db: sqlite3.Connection, files: Store, url: str, extra_labels: list[str],
          progress: bool, chunk: int, t0: float) -> dict[str, int | float]:
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    total = int(db.execute("SELECT count(*) FROM items").fetchone()[0])
    if not meta:
        if total:
            raise ValueError("the SQLite store has rows but no model record (meta)")
        return {"copied": 0, "skipped": 0, "seconds": 0.0}
    dim = int(meta["embedding_dim"])
    have = {r[1] for r in db.execute("PRAGMA table_info(items)")}
    dicom = [c for c in (*DICOM_COLUMNS, "stored_as") if c in have]
    labels = sorted({r[0] for r in db.execute("SELECT DISTINCT label FROM items")}
                    | set(extra_labels))
    pg = PgStore(url)
    try:
        pg.setup(dim, labels, hnsw=False)
        pg.check_model(meta["model_fingerprint"], dim, meta.get("model_name", "?"))
        cols = ["id", "sha256", "label", "label_source", "content_type", "format", "metadata",
                "in_distribution", "created_at", "vector", *dicom]
        copied = skipped = 0
        last = 0
        with tqdm(total=total, disable=not progress, unit="img", desc="migrating") as bar:
            while True:
                rows = db.execute(f"SELECT {', '.join(cols)} FROM items WHERE id > ? "
                                  "ORDER BY id LIMIT ?", (last, chunk)).fetchall()
                if not rows:
                    break
                last = int(rows[-1][0])
                n = _insert_chunk(pg, files, rows, dim, dicom)
                copied += n
                skipped += len(rows) - n
                bar.update(len(rows))
        with unavailable_as_503("migrate", pg.pool), pg.pool.connection() as conn:
            conn.execute("SELECT setval(pg_get_serial_sequence('items', 'id'), "
                         "greatest((SELECT max(id) FROM items), 1))")
    finally:
        pg.close()
    seconds = time.perf_counter() - t0
    log.info("migrated %d rows (%d already there) in %.1fs", copied, skipped, seconds)
    return {"copied": copied, "skipped": skipped, "seconds": round(seconds, 1)}


def _insert_chunk(pg: PgStore, files: Store, rows: list[tuple[object, ...]], dim: int,
                  dicom: list[str]) -> int:
    names = ["id", "sha256", "label", "label_source", "content_type", "format", "metadata",
             "in_distribution", "created", *dicom]
    sql = (f"INSERT INTO items ({', '.join(names)}) OVERRIDING SYSTEM VALUE VALUES "
           f"({', '.join(['%s'] * len(names))}) ON CONFLICT DO NOTHING RETURNING id")
    n = 0
    with unavailable_as_503("migrate", pg.pool), pg.pool.connection() as conn, conn.transaction():
        for r in rows:
            item_id, sha, label, source, ctype, fmt, metadata, ood, created, blob = r[:10]
            data = files.original_path(str(sha)).read_bytes()
            vector = np.frombuffer(cast(bytes, blob), dtype="<f4").astype(np.float32)
            if vector.shape != (dim,):
                raise ValueError(f"row {item_id}: a vector of {vector.size} values, not {dim}")
            params = [item_id, sha, label, source, ctype, fmt, json.dumps(json.loads(
                str(metadata))), None if ood is None else bool(ood), created, *r[10:]]
            if conn.execute(sql, params).fetchone() is None:
                continue  # copied by an earlier run
            conn.execute("INSERT INTO item_vectors (label, id, vector) VALUES (%s, %s, %s)",
                         (label, item_id, vector))
            conn.execute("INSERT INTO originals (sha256, data) VALUES (%s, %s)", (sha, data))
            n += 1
    return n
