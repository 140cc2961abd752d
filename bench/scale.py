"""Section "scale": a saved N-item approximate index (N = 1M by default) in a fresh process
(resident memory, load time), and the real service started on a data dir holding N stored
items (SQLite rows with vectors + the index snapshot): time to /health 200, its RSS and a
short single-client /search run."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from app.service.store import DB_FILE, Store
from bench import servers
from bench.common import REPO, rss_bytes, stop_process
from bench.http import run_load
from bench.realistic import during_snapshot
from bench.search import Kept, batched_ids, recall_at_k, time_single
from bench.vectors import VectorSource, gallery_chunks
from index import FaissIndex
from index._subindex import default_nprobe, ivf_nlist
from models.embed import Embedder

log = logging.getLogger(__name__)


def _probe(model_dir: Path, index_dir: Path, timeout_s: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.probe", str(model_dir), str(index_dir)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    finally:
        stop_process(proc, "probe")
    if proc.returncode != 0:
        raise RuntimeError(f"probe failed: {err.strip()[-2000:]}")
    res: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    res["process_wall_s"] = time.perf_counter() - t0
    return res


def fill_store(data_dir: Path, chunks: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
               embedder: Embedder) -> float:
    """Rows as the service stores them, from (ids, vectors, labels) chunks (vector blob,
    label, fake content hash; no original files: start-up never reads them). Written
    directly: embedding N images is not the point here, and the service's start-up path
    is the same."""
    t0 = time.perf_counter()
    cfg = embedder.config
    store = Store(data_dir)  # creates the schema
    try:
        store.check_model(cfg.fingerprint, cfg.embedding_dim, cfg.name)  # writes meta
    finally:
        store.close()
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    db = sqlite3.connect(data_dir / DB_FILE, isolation_level=None)
    try:
        db.execute("PRAGMA synchronous=OFF")  # bulk load of a throwaway benchmark store
        db.execute("BEGIN")
        for ids, vecs, labels in chunks:
            db.executemany(
                "INSERT INTO items (id, sha256, label, label_source, content_type, format,"
                " metadata, vector, created_at) VALUES (?, ?, ?, 'given', 'image/jpeg', 'jpeg',"
                " '{}', ?, ?)",
                ((int(i), f"{int(i):064x}", str(lab), v.astype("<f4").tobytes(), now)
                 for i, v, lab in zip(ids, vecs, labels, strict=True)))
        db.execute("COMMIT")
    finally:
        db.close()
    return time.perf_counter() - t0


def _nprobe_sweep(index_dir: Path, src: VectorSource, kept: Kept, n: int, repeats: int,
                  max_s: float) -> list[dict[str, Any]]:
    """Predicted-scope time and recall@10 by nprobe, each loaded through the public
    ``FaissIndex.load(nprobe=)``: which setting would meet the target if the default misses."""
    n_labels = len(set(src.base_labels.tolist()))
    default = default_nprobe(ivf_nlist(n // n_labels))  # what FaissIndex uses per label

    def measure(nprobe: int) -> dict[str, Any]:
        index = FaissIndex.load(index_dir, nprobe=nprobe)
        got = batched_ids(index, src.queries, src.query_labels, "predicted", 10)
        t = time_single(index, src.queries[:100], src.query_labels[:100], "predicted", 10,
                        repeats, max_s)
        recall = recall_at_k(got, kept.exact["predicted"])
        log.info("scale: nprobe %4d%s: predicted %.3f ms/q, recall@10 %.3f", nprobe,
                 " (default)" if nprobe == default else "", t["ms_per_query"], recall)
        return {"nprobe": nprobe, "default": nprobe == default, "recall_at_k": recall,
                "ms_per_query": t["ms_per_query"], "p99_ms": t["p99_ms"]}

    # The default; then half of it if that is enough (headroom), else doubling (at most
    # 8x) until recall@10 reaches 0.95.
    rows = [measure(default)]
    if rows[0]["recall_at_k"] >= 0.95:
        if default > 1:
            rows.append(measure(default // 2))
    else:
        while rows[-1]["recall_at_k"] < 0.95 and rows[-1]["nprobe"] < 8 * default:
            rows.append(measure(2 * rows[-1]["nprobe"]))
    rows.sort(key=lambda r: r["nprobe"])
    return rows


def bench_scale(src: VectorSource, n: int, kept: Kept, embedder: Embedder, model_dir: Path,
                work: Path, approx_min_size: int, *, with_service: bool, tool: str,
                image: bytes, seconds: int, repeats: int, max_s: float,
                timeout_s: float = 300.0) -> dict[str, Any]:
    index = kept.index
    data_dir = work / "scale-data"
    index_dir = data_dir / "index"
    t0 = time.perf_counter()
    index.save(index_dir, extra={"max_id": n, "model_fingerprint": index.model_fingerprint})
    raw = n * src.dim * 4
    weights = sum(p.numel() * p.element_size() for p in embedder.model.parameters())
    out: dict[str, Any] = {"n": n, "dim": src.dim, "index_type": index.index_type,
                           "raw_vectors_bytes": raw, "model_weights_bytes": weights,
                           "save_s": time.perf_counter() - t0}
    log.info("scale: saved %d-item %s index in %.1fs; probing a fresh process", n,
             index.index_type, out["save_s"])
    probe = _probe(model_dir, index_dir, timeout_s)
    probe["index_rss_bytes"] = probe["rss_after_index"] - probe["rss_after_model"]
    probe["index_rss_over_raw"] = probe["index_rss_bytes"] / raw
    # Target: RSS <= 1.5 x raw vectors + the model (the process as loaded before the index).
    probe["budget_bytes"] = 1.5 * raw + probe["rss_after_model"]
    out["probe"] = probe
    if index.index_type == "ivf":
        out["nprobe_sweep"] = _nprobe_sweep(index_dir, src, kept, n, repeats, max_s)
    log.info("scale: probe RSS %.0f MiB (model %.0f MiB + index %.0f MiB = %.2fx raw), load "
             "%.1fs", probe["rss_after_index"] / 2**20, probe["rss_after_model"] / 2**20,
             probe["index_rss_bytes"] / 2**20, probe["index_rss_over_raw"],
             probe["model_load_s"] + probe["index_load_s"])
    if with_service:
        out["service"] = _service_start(src, n, embedder, model_dir, data_dir, work,
                                        approx_min_size, tool, image, seconds, timeout_s)
    return out


def _service_start(src: VectorSource, n: int, embedder: Embedder, model_dir: Path,
                   data_dir: Path, work: Path, approx_min_size: int, tool: str, image: bytes,
                   seconds: int, timeout_s: float) -> dict[str, Any]:
    res: dict[str, Any] = {"fill_store_s": fill_store(data_dir, gallery_chunks(src, n), embedder)}
    log.info("scale: %d SQLite rows written in %.1fs; starting the service", n,
             res["fill_store_s"])
    image_path = work / "scale-query.jpeg"
    image_path.write_bytes(image)
    # Every write is due for a snapshot: the first one below snapshots all n items.
    with servers.service(model_dir, data_dir, work, "scale-service", seed_demo="false",
                         index_type="ivf", approx_min_size=str(approx_min_size),
                         snapshot_every="1") as svc:
        res["start_to_health_s"] = svc.wait_healthy(timeout_s)
        res["rss_bytes"] = rss_bytes(svc.proc.pid).get("VmRSS")
        url = svc.url + "/search?k=10&scope=predicted"
        run_load(tool, url, image_path, 1, 1)  # warm-up: first calls profile and optimise
        res["search_c1"] = run_load(tool, url, image_path, 1, seconds).as_dict()
        res["rss_after_search_bytes"] = rss_bytes(svc.proc.pid).get("VmRSS")
        res["during_snapshot"] = during_snapshot(svc, image, fresh_png())
    log.info("scale: service with %d items healthy after %.1fs, RSS %.0f MiB, /search p50 "
             "%.1f ms", n, res["start_to_health_s"], (res["rss_bytes"] or 0) / 2**20,
             res["search_c1"]["p50_ms"])
    return res


def fresh_png(seed: int = 7) -> bytes:
    """A 64×64 noise PNG no row of a filled store has (their hashes are made up)."""
    import io

    from PIL import Image

    arr = np.random.default_rng(seed).integers(0, 256, (64, 64), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()
