"""``cbmir serve --workers 2`` on the embedded backend: a real supervisor and two workers on
one data dir, on loopback. Every request below opens a new connection, so the kernel
hands it to either worker; ``X-Cbmir-Worker`` names the one that answered, and the loops
run until both have (bounded). Read-your-writes whichever worker answers (4 clients at
once too), deletes and relabels seen by both, counts that agree, one ``duplicate: false``
for the same bytes sent to both at once, a second server refused, a killed worker replaced
while the other answers, one ``/metrics`` scrape counting the requests of both workers (and
of a killed one); and no worker outlives a killed supervisor."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import png_bytes
from serverproc import CBMIR, ServerProc, poll, server_env
from worker_metrics import ROUNDS, ask_info, counted, scrape


def _env(tiny_model: Path, data: Path) -> dict[str, str]:
    # TMPDIR: the supervisor's metrics directory is made under the test's own tmp dir (a
    # supervisor killed by SIGKILL cannot remove it).
    return server_env(CBMIR_MODEL_DIR=str(tiny_model), CBMIR_DATA_DIR=str(data),
                      CBMIR_SNAPSHOT_SECONDS="1", TMPDIR=str(data.parent))


def _workers(srv: ServerProc) -> list[Any]:
    """The supervisor's worker processes (uvicorn's spawned children)."""
    import psutil

    assert srv.proc is not None
    return [c for c in psutil.Process(srv.proc.pid).children()
            if "spawn_main" in " ".join(c.cmdline())]


def _metrics_dir(srv: ServerProc) -> Path:
    """The directory the supervisor made for its workers' metric files (in their env)."""
    dirs = {w.environ()["PROMETHEUS_MULTIPROC_DIR"] for w in _workers(srv)}
    assert len(dirs) == 1, dirs
    return Path(dirs.pop())


@pytest.fixture(scope="module")
def served(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    tmp = tmp_path_factory.mktemp("workers")
    with ServerProc(_env(tiny_model, tmp / "data"), tmp / "serve.log") as srv:
        srv.start(args=("--workers", "2"))
        poll(lambda: len(_pids(lambda: httpx.get(f"{srv.url}/health", timeout=10))) == 2,
             60, "both workers to answer /health")
        metrics_dir = _metrics_dir(srv)
        assert metrics_dir.parent == tmp and metrics_dir.stat().st_mode & 0o777 == 0o700
        yield srv
        assert srv.terminate() == 0
        assert " 500 " not in srv.log()
        assert not metrics_dir.exists()  # removed by the supervisor as it stopped


def _pids(call: Any, rounds: int = 12) -> set[str]:
    """The workers that answered ``rounds`` calls, each a 200."""
    seen = set()
    for _ in range(rounds):
        r = call()
        assert r.status_code == 200, r.text
        seen.add(r.headers["x-cbmir-worker"])
    return seen


def _index(url: str, data: bytes) -> tuple[dict[str, Any], str]:
    r = httpx.post(f"{url}/index", files=[("files", ("x.png", data, "image/png"))], timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["items"][0], r.headers["x-cbmir-worker"]


def _search(url: str, data: bytes, **params: Any) -> tuple[list[dict[str, Any]], str]:
    r = httpx.post(f"{url}/search", files={"file": ("q.png", data)},
                   params={"scope": "all", "k": 3, **params}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["results"], r.headers["x-cbmir-worker"]


def _healths(url: str) -> dict[str, dict[str, Any]]:
    """/health of each worker, once both have answered."""
    out: dict[str, dict[str, Any]] = {}
    for _ in range(ROUNDS):
        r = httpx.get(f"{url}/health", timeout=10)
        assert r.status_code == 200, r.text
        out[r.headers["x-cbmir-worker"]] = r.json()
        if len(out) == 2:
            break
    assert len(out) == 2, out
    return out


def _sizes(url: str) -> dict[str, int]:
    return {pid: h["index"]["size"] for pid, h in _healths(url).items()}


def test_read_your_writes_whichever_worker_answers(served: ServerProc) -> None:
    crossed = 0  # indexed on one worker, found by the other with the very next request
    searched_by: set[str] = set()
    for n in range(ROUNDS):
        item, wrote = _index(served.url, png_bytes(100 + n))
        hits, read = _search(served.url, png_bytes(100 + n))
        assert hits[0]["id"] == item["id"], (n, wrote, read)
        searched_by.add(read)
        crossed += wrote != read
        if n >= 5 and crossed >= 3 and len(searched_by) == 2:
            break
    assert crossed >= 3 and len(searched_by) == 2, (crossed, searched_by)


def test_concurrent_writers_each_read_their_writes(served: ServerProc) -> None:
    """4 clients at once, each indexing then searching (new connections: any worker);
    nothing lost, nothing twice, each item found by its writer's next search."""
    before = next(iter(_sizes(served.url).values()))

    def writer(w: int) -> list[int]:
        ids = []
        for i in range(6):
            item, _ = _index(served.url, png_bytes(20_000 + 100 * w + i))
            hits, _ = _search(served.url, png_bytes(20_000 + 100 * w + i))
            assert hits[0]["id"] == item["id"]
            ids.append(item["id"])
        return ids

    with ThreadPoolExecutor(4) as pool:
        ids = [i for part in pool.map(writer, range(4)) for i in part]
    assert len(set(ids)) == 24
    assert set(_sizes(served.url).values()) == {before + 24}


def test_deletes_relabels_and_counts_agree(served: ServerProc) -> None:
    url = served.url
    items = [_index(url, png_bytes(500 + n))[0] for n in range(4)]
    before = _sizes(url)
    assert len(set(before.values())) == 1, before
    r = httpx.delete(f"{url}/images/{items[0]['id']}", timeout=30)
    assert r.status_code == 204
    after = _sizes(url)
    assert set(after.values()) == {next(iter(before.values())) - 1}, after
    metrics = set()
    for _ in range(ROUNDS):  # the Prometheus gauge of each worker counts the same
        r = httpx.get(f"{url}/metrics", timeout=10)
        line = next(x for x in r.text.splitlines() if x.startswith("cbmir_index_size"))
        metrics.add((r.headers["x-cbmir-worker"], float(line.split()[1])))
        if len({pid for pid, _ in metrics}) == 2:
            break
    assert {v for _, v in metrics} == {float(next(iter(after.values())))}, metrics
    target = "Hand" if items[1]["label"] != "Hand" else "CXR"
    r = httpx.patch(f"{url}/images/{items[1]['id']}", json={"label": target}, timeout=30)
    assert r.status_code == 200, r.text
    seen = set()
    for _ in range(ROUNDS):  # every worker: the deleted item is gone, the relabelled moved
        hits, pid = _search(url, png_bytes(501), label=target)
        assert hits and hits[0]["id"] == items[1]["id"] and hits[0]["label"] == target
        gone, pid2 = _search(url, png_bytes(500))
        assert items[0]["id"] not in {h["id"] for h in gone}
        seen |= {pid, pid2}
        if len(seen) == 2:
            break
    assert len(seen) == 2
    # One worker saves the snapshots; both report the age of the one published (1 s ticks).
    poll(lambda: all(h["snapshot"]["age_s"] < 5 for h in _healths(url).values()), 30,
         "both workers to report a fresh snapshot")


def test_same_bytes_to_both_workers_at_once_is_stored_once(served: ServerProc) -> None:
    across = 0
    for n in range(ROUNDS):
        gate = threading.Barrier(2)

        def send(_: int, seed: int = 90_000 + n, gate: threading.Barrier = gate
                 ) -> tuple[dict[str, Any], str]:
            gate.wait()
            return _index(served.url, png_bytes(seed))

        with ThreadPoolExecutor(2) as pool:
            (a, pa), (b, pb) = pool.map(send, range(2))
        assert a["id"] == b["id"]
        assert sorted((a["duplicate"], b["duplicate"])) == [False, True], (a, b)
        across += pa != pb
        if across >= 3:
            break
    assert across >= 3  # the pair went to the two workers at least 3 times


def test_a_second_server_on_the_data_dir_is_refused(served: ServerProc) -> None:
    for args in ((), ("--workers", "2")):
        r = subprocess.run([CBMIR, "serve", "--port", "1", *args], env=served.env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stderr
        assert "is in use by another cbmir process" in r.stderr
    r = subprocess.run([CBMIR, "index", str(Path(__file__).parent)], env=served.env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "is in use by another cbmir process" in r.stderr, r.stderr


def test_a_killed_worker_is_replaced_and_the_other_answers(served: ServerProc) -> None:
    url = served.url
    item, _ = _index(url, png_bytes(7000))
    victim = _search(url, png_bytes(7000))[1]
    os.kill(int(victim), signal.SIGKILL)
    pids: set[str] = set()

    def replaced() -> bool:
        # Every request meanwhile answers 200 (a restarting worker takes no connection
        # until it has loaded), and finds what was written before the kill.
        hits, pid = _search(url, png_bytes(7000))
        assert hits[0]["id"] == item["id"]
        pids.add(pid)
        return len(pids - {victim}) == 2

    poll(replaced, 120, "a new worker to answer in place of the killed one")
    assert victim not in _pids(lambda: httpx.get(f"{url}/health", timeout=10))
    assert "died" in served.log()


def test_one_scrape_counts_every_workers_requests(served: ServerProc) -> None:
    """Whichever worker answers it, one scrape counts the requests both workers answered;
    after ``kill -9`` of one, its requests still count (no total goes backwards) and its
    replacement's add to them. The killed worker's live gauges are dropped, its counters
    kept."""
    url = served.url
    item, _ = _index(url, png_bytes(8000))
    pids = {w.pid for w in _workers(served)}
    both = {str(p) for p in pids}
    answered = ask_info(url, item["id"], both)
    sent = sum(answered.values())
    assert all(n < sent for n in answered.values())  # a worker alone saw fewer

    # A worker counts a request just after its answer went out: poll (bounded) until a
    # scrape of each worker says `sent`, then never anything else.
    poll(lambda: all(c == {"200": sent} for c in counted(url, both).values()), 10,
         f"a scrape of each worker to count all {sent} requests ({answered})")
    # Samples named as with one process (less the _created ones, not kept in this mode).
    from prometheus_client.parser import text_string_to_metric_families

    from app.service.metrics import Metrics

    one = {s.name for f in text_string_to_metric_families(Metrics().render().decode())
           for s in f.samples if not s.name.endswith("_created")}
    assert one - scrape(url)[2] == set()

    metrics_dir = _metrics_dir(served)
    victim = next(iter(answered))
    assert (metrics_dir / f"gauge_livesum_{victim}.db").is_file()
    os.kill(int(victim), signal.SIGKILL)
    seen: set[str] = set()

    def replaced() -> bool:
        pid, counts, _ = scrape(url)
        assert counts == {"200": sent}, (pid, counts)  # from the first scrape on
        seen.add(pid)
        return len(seen - both) == 1

    poll(replaced, 120, "a new worker to answer in place of the killed one")
    now = both - {victim} | (seen - both)
    assert {w.pid for w in _workers(served)} == {int(p) for p in now}
    # The supervisor forgot the dead worker's live gauges; its counters still count.
    assert not list(metrics_dir.glob(f"gauge_live*_{victim}.db"))
    assert (metrics_dir / f"counter_{victim}.db").is_file()
    more = sum(ask_info(url, item["id"], now).values())
    poll(lambda: all(c == {"200": sent + more} for c in counted(url, now).values()), 10,
         f"a scrape of each worker to count all {sent + more} requests")


def test_workers_die_with_their_supervisor(tiny_model: Path, tmp_path: Path) -> None:
    """``kill -9`` of the supervisor frees the data dir's lock: its workers must not keep
    serving it (PR_SET_PDEATHSIG), so the next ``cbmir serve`` is alone on it."""
    import psutil

    with ServerProc(_env(tiny_model, tmp_path / "data"), tmp_path / "s.log") as srv:
        srv.start(args=("--workers", "2"))
        workers = [w.pid for w in _workers(srv)]
        assert len(workers) == 2
        srv.kill()
        poll(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() !=
                             psutil.STATUS_ZOMBIE for p in workers), 60,
             "the workers to exit after their supervisor")
        srv.start()  # the data dir is free again: one process, as by default
