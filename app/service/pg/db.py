"""Connections to PostgreSQL: a pool per URL, URLs shown without passwords, and every
driver failure that means "the database is not there right now" turned into
:class:`DatabaseUnavailable` (503 + ``Retry-After``), never a 500.

Connections are not checked before each use (that would be one more round trip per
query): one broken by a database restart fails its request with a 503 and is replaced;
the pool also checks its idle connections as soon as one failure is seen, so at most the
requests already in flight see the restart, and it keeps reconnecting in the background.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from app.service.errors import Unavailable

log = logging.getLogger(__name__)

MISSING_DRIVER = (
    "CBMIR_DATABASE_URL needs the PostgreSQL driver: pip install 'cbmir[pg]' "
    "(psycopg[binary], psycopg-pool, pgvector)"
)


class DatabaseUnavailable(Unavailable):
    """The database cannot be reached, or the connection was lost: nothing was written
    by the request (its transaction did not commit); the client should retry."""


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for logs and error messages)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable database URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _driver() -> Any:
    try:
        import pgvector.psycopg  # noqa: F401
        import psycopg
        import psycopg_pool  # noqa: F401
    except ImportError:
        raise ValueError(MISSING_DRIVER) from None
    return psycopg


def _transient() -> tuple[type[BaseException], ...]:
    import psycopg
    import psycopg_pool

    return (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout,
            psycopg_pool.PoolClosed)


@contextmanager
def unavailable_as_503(what: str, pool: Any = None) -> Iterator[None]:
    """Turn a lost or unreachable database into :class:`DatabaseUnavailable`; with
    ``pool``, have it test its idle connections (off this thread) after a failure."""
    try:
        yield
    except _transient() as e:
        if pool is not None:
            threading.Thread(target=_check_quietly, args=(pool,), daemon=True).start()
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        log.warning("database unavailable during %s: %s", what, first)
        raise DatabaseUnavailable(f"database unavailable ({what}); retry shortly") from e


def _check_quietly(pool: Any) -> None:
    with suppress(Exception):
        pool.check()


def check_reachable(url: str, timeout_s: float = 5.0) -> None:
    """One connection attempt; a one-line ``ValueError`` naming the URL (no password)."""
    psycopg = _driver()
    try:
        psycopg.connect(url, connect_timeout=max(1, int(timeout_s)), autocommit=True).close()
    except psycopg.Error as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        # libpq's messages may quote the host and port but never the password.
        raise ValueError(f"cannot connect to the database {redact(url)}: {reason}") from None


def _configure(conn: Any) -> None:
    from pgvector.psycopg import register_vector

    register_vector(conn)
    conn.commit()


def open_pool(url: str, *, size: int, timeout_s: float, session_sql: str = "") -> Any:
    """A ``psycopg_pool.ConnectionPool`` on ``url``; vectors travel as numpy arrays."""
    _driver()
    from psycopg_pool import ConnectionPool

    def configure(conn: Any) -> None:
        _configure(conn)
        if session_sql:
            conn.execute(session_sql)
            conn.commit()

    # Autocommit: a read is one round trip (no BEGIN/COMMIT around it); writes open
    # their transaction explicitly (``conn.transaction()``). TCP keepalives: a database
    # host that vanishes without a reset (a network partition) is noticed in about 30 s
    # and the request answers 503, instead of waiting for the OS's two-hour default.
    pool = ConnectionPool(
        url, min_size=1, max_size=size, timeout=timeout_s, open=False, configure=configure,
        name="cbmir", kwargs={"connect_timeout": max(1, int(timeout_s)), "autocommit": True,
                              "keepalives": 1, "keepalives_idle": 10,
                              "keepalives_interval": 5, "keepalives_count": 4},
    )
    pool.open(wait=True, timeout=timeout_s)
    return pool
