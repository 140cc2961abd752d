"""The vector index on PostgreSQL + pgvector (:class:`~app.service.backend.ServiceIndex`).

It lives here rather than in ``index/`` because it is a view of the store's own tables:
:meth:`PgStore.insert <app.service.pg.store.PgStore.insert>` commits each vector with its
row, and a delete cascades, so :meth:`add` and :meth:`remove` have nothing left to do and
:meth:`missing` is always empty (no index can lag behind the rows).

Search: ``ORDER BY vector <#> q LIMIT k`` (``<#>`` is the negative inner product: the
cosine for the model's L2-normalised descriptors), ``WHERE label = $1`` for one class,
which prunes to that class's partition. ``CBMIR_PG_INDEX=exact`` (the default) scans it;
``hnsw`` builds an HNSW index per partition and searches it with ``hnsw.ef_search`` and
``hnsw.iterative_scan = relaxed_order``, so a filtered scan keeps going until it has k
rows instead of stopping at ef_search candidates (results are re-sorted here).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any, Literal

import numpy as np

from app.service.errors import Unavailable
from app.service.pg.db import unavailable_as_503
from index.base import SearchResult

log = logging.getLogger(__name__)

PgIndexKind = Literal["exact", "hnsw"]
COUNT_EVERY_S = 1.0  # the size /health and /metrics show is recounted this often


def session_sql(kind: PgIndexKind, ef_search: int) -> str:
    """Per-connection settings for searches (they only affect HNSW scans)."""
    if kind != "hnsw":
        return ""
    return (f"SET hnsw.ef_search = {int(ef_search)}; "
            "SET hnsw.iterative_scan = relaxed_order")


class PgVectorIndex:
    backend = "pgvector"

    def __init__(self, pool: Any, dim: int, kind: PgIndexKind = "exact",
                 *, force_exact: bool = False, primary: Any = None) -> None:
        """``pool`` serves the searches (a standby's, with ``CBMIR_DATABASE_READ_URL``);
        ``primary`` (default: the same) the size and the ids."""
        self.pool, self.dim, self.kind = pool, dim, kind
        self.primary = primary if primary is not None else pool
        # HNSW indexes left by an earlier CBMIR_PG_INDEX=hnsw run: exact search must not
        # use them, so the planner is told not to (one extra statement per search).
        self.force_exact = force_exact and kind == "exact"
        self.extra: dict[str, Any] = {}
        self.reachable = True  # as of the last count
        self._count = self._counted()
        self._count_lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._recount, name="cbmir-pg-count", daemon=True).start()

    @property
    def index_type(self) -> str:
        return self.kind

    def _counted(self) -> int:
        with unavailable_as_503("count", self.primary), self.primary.connection() as conn:
            return int(conn.execute("SELECT count(*) FROM items").fetchone()[0])

    def _recount(self) -> None:
        """Every ``COUNT_EVERY_S``: the exact size (other replicas write too), and whether
        the database answers. Off the event loop, where ``/health`` reads the result."""
        while not self._stop.wait(COUNT_EVERY_S):
            if getattr(self.primary, "closed", False):
                return  # the service is shutting down
            try:
                n = self._counted()
            except Unavailable:
                self.reachable = False
                continue
            except Exception:  # anything else: logged, and counted again next time
                log.exception("counting the items failed")
                continue
            with self._count_lock:
                self._count, self.reachable = n, True

    def close(self) -> None:
        self._stop.set()

    def __len__(self) -> int:
        """Items in the database: exact as of the last count (at most ``COUNT_EVERY_S``
        old), plus this replica's writes since. Never waits for the database."""
        return self._count

    def add(self, ids: np.ndarray, vectors: np.ndarray, labels: Sequence[str] | str) -> None:
        """Nothing to do: the store committed these vectors with their rows."""
        with self._count_lock:
            self._count += len(ids)

    def remove(self, ids: np.ndarray | Sequence[int]) -> int:
        """Nothing to do: a row's vector is deleted with it (``ON DELETE CASCADE``)."""
        with self._count_lock:
            self._count = max(0, self._count - len(ids))
        return 0

    def missing(self, ids: np.ndarray | Sequence[int]) -> np.ndarray:
        return np.empty(0, np.int64)

    def ids(self) -> np.ndarray:
        with unavailable_as_503("read", self.primary), self.primary.connection() as conn:
            rows = conn.execute("SELECT id FROM item_vectors ORDER BY id").fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def search(
        self, vectors: np.ndarray, k: int, labels: Sequence[str] | None = None
    ) -> SearchResult:
        q = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        out = SearchResult.empty(len(q), k)
        if labels is not None and not labels:
            return out
        params: list[Any]
        if labels is None:
            where, params = "", []
        elif len(labels) == 1:
            where, params = "WHERE label = %s", [labels[0]]
        else:
            where, params = "WHERE label = ANY(%s)", [list(labels)]
        query = (f"SELECT id, vector <#> %s AS d FROM item_vectors {where} "
                 "ORDER BY d LIMIT %s")
        with unavailable_as_503("search", self.pool), self.pool.connection() as conn, (
                conn.transaction() if self.force_exact else nullcontext()):
            if self.force_exact:
                conn.execute("SET LOCAL enable_indexscan = off")
            for i, v in enumerate(q):
                rows = conn.execute(query, [v, *params, k]).fetchall()
                rows.sort(key=lambda r: r[1])  # relaxed_order scans may be slightly out
                for j, (item_id, d) in enumerate(rows[:k]):
                    out.ids[i, j] = item_id
                    out.scores[i, j] = -d
        return out
