"""Connections to PostgreSQL: a pool per URL, URLs shown without passwords, and every
driver failure that means "the database is not there right now" turned into
:class:`DatabaseUnavailable` (503 + ``Retry-After``), never a 500.

The pool checks a connection before lending it (one round trip), so after the database
restarts the stale connections are dropped and replaced instead of failing a request
each; the pool keeps reconnecting in the background while it is down.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
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
def unavailable_as_503(what: str) -> Iterator[None]:
    """Turn a lost or unreachable database into :class:`DatabaseUnavailable`."""
    try:
        yield
    except _transient() as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        log.warning("database unavailable during %s: %s", what, first)
        raise DatabaseUnavailable(f"database unavailable ({what}); retry shortly") from e


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

    pool = ConnectionPool(
        url, min_size=1, max_size=size, timeout=timeout_s, open=False, configure=configure,
        check=ConnectionPool.check_connection, name="cbmir",
        kwargs={"connect_timeout": max(1, int(timeout_s))},
    )
    pool.open(wait=True, timeout=timeout_s)
    return pool
