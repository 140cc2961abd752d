"""Section "service", continued: /search with realistic query images (per kind, beside the
floor given the same upload), the server's peak memory under concurrent large uploads,
and /search and /health latencies while a big index snapshot is written."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench import servers
from bench.common import percentile, rss_bytes
from bench.http import run_load
from bench.queries import memory_image, query_kinds

log = logging.getLogger(__name__)


def by_kind(tool: str, floor: servers.Server, svc: servers.Server, jpeg: bytes, work: Path,
            seconds: int, levels: tuple[int, ...] = (1, 4)) -> dict[str, Any]:
    """p50 and req/s per query kind, service and floor back to back at each level.

    4 clients, not 16, and at least 6 s: a mammogram takes ~0.5 s of CPU to decode, so 16
    concurrent ones would not finish inside a short window on 2 cores."""
    seconds = max(seconds, 6)
    out: dict[str, Any] = {}
    query = "/search?k=10&scope=predicted"
    for kind, (data, what) in query_kinds(jpeg).items():
        path = work / f"query-{kind}"
        path.write_bytes(data)
        run_load(tool, svc.url + query, path, 2, 1)  # warm-up for this size
        rows = {}
        for c in levels:
            rows[c] = {s.name: run_load(tool, s.url + query, path, c, seconds).as_dict()
                       for s in (svc, floor)}
            v, f = rows[c]["service"], rows[c]["floor"]
            log.info("/search %s c=%d: service %.0f req/s p50 %.1f ms (%d errors) | floor %.0f "
                     "req/s p50 %.2f ms", kind, c, v["throughput_rps"], v["p50_ms"],
                     v["errors"], f["throughput_rps"], f["p50_ms"])
        out[kind] = {"what": what, "bytes": len(data), "levels": rows}
    return out


async def _concurrent(url: str, data: bytes, n: int) -> tuple[list[int], float]:
    async with httpx.AsyncClient(timeout=300) as c:
        t0 = time.perf_counter()
        rs = await asyncio.gather(*(c.post(url, files={"file": ("big.png", data)})
                                    for _ in range(n)), return_exceptions=True)
    codes = [r.status_code if isinstance(r, httpx.Response) else -1 for r in rs]
    return codes, time.perf_counter() - t0


def large_uploads(svc: servers.Server, n: int = 16) -> dict[str, Any]:
    """``n`` concurrent searches of a legal 6000x6000 16-bit PNG; the server's peak RSS."""
    data = memory_image()
    before = rss_bytes(svc.proc.pid)
    codes, wall = asyncio.run(_concurrent(svc.url + "/search?k=10", data, n))
    after = rss_bytes(svc.proc.pid)
    text = httpx.get(svc.url + "/metrics", timeout=10).text
    peak_reserved = next((float(line.split()[1]) for line in text.splitlines()
                          if line.startswith("cbmir_decode_reserved_bytes_peak ")), None)
    res = {"requests": n, "image_bytes": len(data), "statuses": sorted(codes),
           "all_answered": all(c in (200, 413, 503) for c in codes), "seconds": wall,
           "rss_before_bytes": before.get("VmRSS"), "peak_rss_bytes": after.get("VmHWM"),
           "rss_after_bytes": after.get("VmRSS"), "decode_reserved_peak_bytes": peak_reserved}
    log.info("memory: %d x 6000x6000 16-bit PNG: statuses %s, peak RSS %.0f MiB (before %.0f, "
             "after %.0f), decode reserved peak %.0f MiB", n, sorted(set(codes)),
             (res["peak_rss_bytes"] or 0) / 2**20, (res["rss_before_bytes"] or 0) / 2**20,
             (res["rss_after_bytes"] or 0) / 2**20, (peak_reserved or 0) / 2**20)
    return res


def probe_while(svc: servers.Server, query: bytes, act: Callable[[], float],
                search: str = "/search?k=10") -> dict[str, Any]:
    """One client searches and one polls /health while ``act()`` runs (after 1 s of steady
    state); ``act`` returns when what it measures ended (perf_counter). Per kind: the
    latencies of the requests started between the start of ``act`` and that end."""
    stop = threading.Event()
    samples: dict[str, list[tuple[float, float, int]]] = {"search": [], "health": []}

    def loop(kind: str) -> None:
        with httpx.Client(base_url=svc.url, timeout=60) as c:
            while not stop.is_set():
                t0 = time.perf_counter()
                r = (c.post(search, files={"file": ("q.jpeg", query)}) if kind == "search"
                     else c.get("/health"))
                samples[kind].append((t0, time.perf_counter() - t0, r.status_code))

    threads = [threading.Thread(target=loop, args=(k,), daemon=True) for k in samples]
    for t in threads:
        t.start()
    time.sleep(1.0)  # a steady state before the act
    start = time.perf_counter()
    end = act()
    stop.set()
    for t in threads:
        t.join(60)
    out: dict[str, Any] = {"seconds": end - start}
    for kind, rows in samples.items():
        before = [1e3 * dt for t0, dt, _ in rows if t0 < start]
        window = [1e3 * dt for t0, dt, _ in rows if start <= t0 <= end]
        out[kind] = {"requests": len(window), "p50_ms": percentile(window, 50),
                     "p99_ms": percentile(window, 99),
                     "max_ms": max(window) if window else float("nan"),
                     "errors": sum(code != 200 for t0, _, code in rows if start <= t0 <= end),
                     "before_p50_ms": percentile(before, 50)}
    return out


def during_snapshot(svc: servers.Server, query: bytes, fresh: bytes,
                    timeout_s: float = 120.0) -> dict[str, Any]:
    """One write into a service started with CBMIR_SNAPSHOT_EVERY=1 starts a snapshot of
    the whole index; one client searches and one polls /health until it is published.
    Only requests that started before the snapshot was saved count."""
    log_start = svc.log_path.stat().st_size
    status: list[int] = []
    published: list[bool] = []

    def write_and_wait() -> float:
        r = httpx.post(svc.url + "/index", files=[("files", ("fresh.png", fresh))], timeout=60)
        status.append(r.status_code)
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            with svc.log_path.open("rb") as fh:
                fh.seek(log_start)
                if b"index snapshot saved" in fh.read():
                    published.append(True)
                    break
            time.sleep(0.05)  # polling a log file: there is no event to wait on
        return time.perf_counter()

    res = probe_while(svc, query, write_and_wait)
    out: dict[str, Any] = {"index_status": status[0], "snapshot_s": res.pop("seconds"),
                           "published": bool(published), **res}
    log.info("during a snapshot (%.1fs): /search p99 %.1f ms (%d), /health p99 %.1f ms (%d)",
             out["snapshot_s"], out["search"]["p99_ms"], out["search"]["requests"],
             out["health"]["p99_ms"], out["health"]["requests"])
    return out


def cap_fidelity(embedder: Any, demo_dir: Path, cap: int) -> list[dict[str, Any]]:
    """How much reducing on read moves the embedding: large images decoded with and
    without the pixel cap, cosine of the two descriptors (the pixels of images under the
    cap are identical by construction; tests/test_decode_identity.py)."""
    import io

    from PIL import Image

    from models.imaging.decode import decode_image

    images = {k: v[0] for k, v in query_kinds(b"").items() if k in ("cr2000x2500",
                                                                    "mammo4000x5000")}
    for name in ("CXR", "Hand", "AbdomenCT"):
        src = sorted((demo_dir / name).glob("*.jpeg"))[0]
        big = Image.open(src).convert("L").resize((3000, 3000), Image.Resampling.BICUBIC)
        for fmt in ("PNG", "JPEG"):
            buf = io.BytesIO()
            big.save(buf, format=fmt)
            images[f"{name} upscaled to 3000², {fmt}"] = buf.getvalue()
    rows = []
    for name, data in images.items():
        full = embedder.embed_images([decode_image(data).image])
        capped = embedder.embed_images([decode_image(data, downscale_above=cap).image])
        rows.append({"image": name, "cosine": float((full.vectors * capped.vectors).sum()),
                     "same_class": bool(full.probabilities.argmax() ==
                                        capped.probabilities.argmax())})
    return rows
