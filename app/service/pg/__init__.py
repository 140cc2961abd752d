"""The PostgreSQL + pgvector backend (``CBMIR_DATABASE_URL``): store and index in one
database shared by any number of replicas. Importing this package needs no driver; opening
a backend does (``pip install 'cbmir[pg]'``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.config import Settings
    from app.service.pg.index import PgVectorIndex
    from app.service.pg.store import PgStore


def open_backend(
    settings: Settings, dim: int, labels: list[str], fingerprint: str, model_name: str
) -> tuple[PgStore, PgVectorIndex]:
    """Connect, create or migrate the schema, check the model; the store and its index."""
    from app.service.pg.db import open_pool
    from app.service.pg.index import PgVectorIndex, session_sql
    from app.service.pg.schema import hnsw_index_count
    from app.service.pg.store import PgStore

    assert settings.database_url is not None
    kind = settings.pg_index
    store = PgStore(settings.database_url.get_secret_value(), pool_size=settings.pg_pool_size,
                    timeout_s=settings.pg_timeout_s,
                    session_sql=session_sql(kind, settings.pg_ef_search))
    try:
        store.setup(dim, labels, hnsw=kind == "hnsw")
        store.check_model(fingerprint, dim, model_name)
        with store.pool.connection() as conn:
            leftover = hnsw_index_count(conn) if kind == "exact" else 0
        read_pool = store.pool
        if settings.database_read_url is not None:
            # Searches on the standby; rows by id still from the primary (a hit deleted
            # there since is dropped, as after any race with a delete).
            read_pool = open_pool(settings.database_read_url.get_secret_value(),
                                  size=settings.pg_pool_size, timeout_s=settings.pg_timeout_s,
                                  session_sql=session_sql(kind, settings.pg_ef_search))
    except BaseException:
        store.close()
        raise
    index = PgVectorIndex(read_pool, dim, kind, force_exact=leftover > 0, primary=store.pool)
    if read_pool is not store.pool:
        store.also_close(read_pool)
    return store, index
