"""Stateless replicas on the PostgreSQL backend: real ``cbmir serve`` processes against one
real database. Concurrent writes through two replicas (the same bytes to both at once
included): no duplicates, nothing lost, every write visible through the other replica;
``kill -9`` of a replica while both are written to; the database stopped mid-run: 503
with ``Retry-After``, never a 500, nothing half-written, and recovery when it returns."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from conftest import png_bytes
from serverproc import ServerProc, poll, server_env
from worker_metrics import ask_info, counted

WRITERS = 4
PER_WRITER = 10


def _env(tiny_model: Path, tmp_path: Path, url: str, **extra: str) -> dict[str, str]:
    # One data dir for every replica: the lock applies only to the embedded backend.
    return server_env(CBMIR_MODEL_DIR=str(tiny_model), CBMIR_DATA_DIR=str(tmp_path / "data"),
                      CBMIR_DATABASE_URL=url, CBMIR_PG_TIMEOUT_S="2", **extra)


@pytest.fixture
def replicas(
    tiny_model: Path, tmp_path: Path, pg_url: str
) -> Iterator[Callable[[int], list[ServerProc]]]:
    started: list[ServerProc] = []

    def start(n: int) -> list[ServerProc]:
        procs = [ServerProc(_env(tiny_model, tmp_path, pg_url), tmp_path / f"replica{i}.log")
                 for i in range(len(started), len(started) + n)]
        for p in procs:
            p.start(wait=False)
        for p in procs:
            p.wait_healthy()
        started.extend(procs)
        return procs

    yield start
    for p in started:
        p.kill()


def _index(url: str, data: bytes) -> dict[str, Any]:
    r = httpx.post(f"{url}/index", files=[("files", ("x.png", data, "image/png"))], timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["items"][0]  # type: ignore[no-any-return]


def _top1(url: str, data: bytes) -> dict[str, Any]:
    r = httpx.post(f"{url}/search", files={"file": ("q.png", data)},
                   params={"scope": "all", "k": 1}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["results"][0]  # type: ignore[no-any-return]


def _rows(url: str) -> list[tuple[Any, ...]]:
    """(id, sha256, has vector, has original) of every row."""
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT i.id, i.sha256, v.id IS NOT NULL, o.sha256 IS NOT NULL FROM items i "
            "LEFT JOIN item_vectors v ON v.id = i.id LEFT JOIN originals o ON "
            "o.sha256 = i.sha256 ORDER BY i.id").fetchall()


def test_two_replicas_concurrent_writes(
    replicas: Callable[[int], list[ServerProc]], pg_url: str
) -> None:
    a, b = replicas(2)
    urls = [a.url, b.url]

    def writer(w: int) -> list[tuple[int, int]]:
        done = []
        for i in range(PER_WRITER):
            seed = 1000 * w + i
            item = _index(urls[(w + i) % 2], png_bytes(seed))
            # Read-your-writes through the *other* replica, right after the 200.
            assert _top1(urls[(w + i + 1) % 2], png_bytes(seed))["id"] == item["id"]
            done.append((seed, item["id"]))
        return done

    with ThreadPoolExecutor(WRITERS) as pool:
        acked = [x for part in pool.map(writer, range(WRITERS)) for x in part]

    # The same bytes to both replicas at the same moment, 8 times: one item each.
    same: list[list[dict[str, Any]]] = []
    for n in range(8):
        gate = threading.Barrier(2)

        def send(url: str, seed: int = 90_000 + n, gate: threading.Barrier = gate
                 ) -> dict[str, Any]:
            gate.wait()
            return _index(url, png_bytes(seed))

        with ThreadPoolExecutor(2) as pool:
            same.append(list(pool.map(send, urls)))
    for pair in same:
        assert pair[0]["id"] == pair[1]["id"]
        # One replica stored it; the other answers with that row, as a duplicate.
        assert sorted(p["duplicate"] for p in pair) == [False, True], pair

    rows = _rows(pg_url)
    assert len(rows) == len(acked) + len(same)  # no duplicates, nothing lost
    assert len({r[1] for r in rows}) == len(rows)
    assert all(r[2] and r[3] for r in rows)  # each with its vector and its original
    assert {i for _, i in acked} <= {r[0] for r in rows}


def test_kill9_of_a_replica_while_both_are_written(
    replicas: Callable[[int], list[ServerProc]], pg_url: str
) -> None:
    a, b = replicas(2)
    acked: list[tuple[int, int]] = []
    lock = threading.Lock()
    killed = threading.Event()

    def writer(w: int) -> None:
        for i in range(PER_WRITER):
            seed = 5000 + 100 * w + i
            url = a.url if (w + i) % 2 else b.url
            try:
                r = httpx.post(f"{url}/index", timeout=30,
                               files=[("files", ("x.png", png_bytes(seed), "image/png"))])
            except httpx.TransportError:
                continue  # the killed replica: not acknowledged
            if r.status_code == 200:
                with lock:
                    acked.append((seed, r.json()["items"][0]["id"]))
            if w == 0 and i == PER_WRITER // 2:
                a.kill()
                killed.set()

    with ThreadPoolExecutor(WRITERS) as pool:
        list(pool.map(writer, range(WRITERS)))
    assert killed.is_set() and len(acked) >= WRITERS * PER_WRITER // 2
    ids = {r[0] for r in _rows(pg_url)}
    for seed, item_id in acked:
        assert item_id in ids
        assert _top1(b.url, png_bytes(seed))["id"] == item_id
    assert all(r[2] and r[3] for r in _rows(pg_url))


def test_database_stopped_mid_run_503_then_recovery(
    tiny_model: Path, tmp_path: Path
) -> None:
    from pgserver import EXTERNAL_URL, PgCluster

    if EXTERNAL_URL:
        pytest.skip("stops the server: needs the embedded one, not CBMIR_TEST_DATABASE_URL")
    cluster = PgCluster()
    try:
        url = cluster.create_database("cbmir_stop")
        with ServerProc(_env(tiny_model, tmp_path, url), tmp_path / "r.log") as srv:
            srv.start()
            first = _index(srv.url, png_bytes(1))
            cluster.stop()
            statuses = []
            for seed in range(2, 4):
                r = httpx.post(f"{srv.url}/index", timeout=30,
                               files=[("files", ("x.png", png_bytes(seed), "image/png"))])
                statuses.append(r.status_code)
                assert r.status_code == 503, r.text
                assert r.headers["Retry-After"] == "1"
                s = httpx.post(f"{srv.url}/search", files={"file": ("q.png", png_bytes(1))},
                               timeout=30)
                assert s.status_code == 503, s.text
            def health() -> dict[str, Any]:
                r = httpx.get(f"{srv.url}/health", timeout=10)
                assert r.status_code == 200  # answered at once, from the last count
                return r.json()  # type: ignore[no-any-return]

            poll(lambda: health()["status"] == "degraded", 20, "/health to say degraded")
            assert "the database is unreachable" in health()["problems"][0]
            cluster.start()
            t0 = time.monotonic()

            def recovered() -> bool:
                r = httpx.post(f"{srv.url}/search", files={"file": ("q.png", png_bytes(1))},
                               params={"scope": "all", "k": 1}, timeout=30)
                assert r.status_code in (200, 503), r.text
                return r.status_code == 200
            poll(recovered, 60, "searches to succeed once the database is back")
            print(f"recovered {time.monotonic() - t0:.1f}s after the database restarted")
            assert _top1(srv.url, png_bytes(1))["id"] == first["id"]
            poll(lambda: health()["status"] == "ok", 20, "/health to be ok again")
            second = _index(srv.url, png_bytes(2))  # the client's retry, stored once
            assert "500" not in srv.log()
        rows = _rows(url)
        assert [r[0] for r in rows] == [first["id"], second["id"]]  # nothing half-written
        assert all(r[2] and r[3] for r in rows)
    finally:
        cluster.close()


def test_serve_workers_share_one_database(tiny_model: Path, tmp_path: Path, pg_url: str) -> None:
    import psutil

    with ServerProc(_env(tiny_model, tmp_path, pg_url), tmp_path / "w.log") as srv:
        srv.start(args=("--workers", "2"))
        assert srv.proc is not None
        workers = [c for c in psutil.Process(srv.proc.pid).children()
                   if c.cmdline()[:1] and "python" in c.cmdline()[0]]
        assert len(workers) >= 2
        # A worker answers /health 200 once its retriever is open: both, when 20 fresh
        # connections in a row (the kernel spreads them over the workers) get a 200.
        poll(lambda: all(httpx.get(f"{srv.url}/health", timeout=5).status_code == 200
                         for _ in range(20)), 60, "both workers to be ready")
        pids = {httpx.get(f"{srv.url}/health", timeout=5).headers["x-cbmir-worker"]
                for _ in range(20)}
        assert pids <= {str(w.pid) for w in workers}  # each answer names its worker
        items = [_index(srv.url, png_bytes(300 + i)) for i in range(6)]
        for i, item in enumerate(items):
            assert _top1(srv.url, png_bytes(300 + i))["id"] == item["id"]
        # One /metrics scrape counts what both workers answered (app.service.metrics):
        # item info on new connections until both have answered, then each one's scrape.
        answered = ask_info(srv.url, items[0]["id"], 2)
        total = sum(answered.values())
        poll(lambda: {c.get("200") for c in counted(srv.url, 2).values()} == {total}, 10,
             f"a scrape of each worker to count all {total} requests ({answered})")
        assert srv.terminate() == 0
    assert len(_rows(pg_url)) == 6


