"""Load generators for POST /search (wrk, or a pure-Python async fallback) and a concurrent
POST /index client. Loopback only; every run is bounded in time (and requests)."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.common import percentile
from bench.data import Img

log = logging.getLogger(__name__)

LUA = Path(__file__).with_name("wrk_multipart.lua")
BOUNDARY = "cbmirbench0a6f3d9e71"  # the same body the Lua script sends


@dataclass(frozen=True)
class LoadResult:
    tool: str
    concurrency: int
    seconds: float
    requests: int
    errors: int
    throughput_rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def wrk_path() -> str | None:
    return shutil.which("wrk")


def multipart_body(data: bytes) -> tuple[bytes, str]:
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"query.jpeg\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
    body = head + data + f"\r\n--{BOUNDARY}--\r\n".encode()
    return body, f"multipart/form-data; boundary={BOUNDARY}"


def run_wrk(url: str, image: Path, concurrency: int, seconds: int) -> LoadResult:
    """One wrk thread: on 2 cores a second thread would take CPU from the server under test."""
    wrk = wrk_path()
    if wrk is None:
        raise RuntimeError("wrk is not installed")
    cmd = [wrk, "-t1", f"-c{concurrency}", f"-d{max(1, seconds)}s", "--timeout", "10s",
           "--latency", "-s", str(LUA), url, "--", str(image)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=seconds + 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    line = next((ln for ln in out.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {err.strip() or out.strip()}")
    r = json.loads(line.removeprefix("BENCH_JSON "))
    secs = r["duration_us"] / 1e6
    errors = sum(r[k] for k in r if k.startswith("errors_"))
    return LoadResult("wrk", concurrency, secs, r["requests"], errors, r["requests"] / secs,
                      r["p50_us"] / 1e3, r["p95_us"] / 1e3, r["p99_us"] / 1e3)


async def _load(url: str, body: bytes, ctype: str, concurrency: int, seconds: float,
                max_requests: int) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    errors = 0
    sent = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:
        t_start = time.perf_counter()
        deadline = t_start + seconds

        async def worker() -> None:
            nonlocal errors, sent
            while sent < max_requests and time.perf_counter() < deadline:
                sent += 1
                t0 = time.perf_counter()
                try:
                    r = await client.post(url, content=body, headers={"Content-Type": ctype})
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - t0)
                errors += not ok

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, errors, time.perf_counter() - t_start


def run_python(url: str, image_data: bytes, concurrency: int, seconds: float,
               max_requests: int = 100_000) -> LoadResult:
    """Closed-loop clients like wrk's connections; the client shares the CPU with the server."""
    body, ctype = multipart_body(image_data)
    lat, errors, secs = asyncio.run(_load(url, body, ctype, concurrency, seconds, max_requests))
    ms = [x * 1e3 for x in lat]
    return LoadResult("python-httpx", concurrency, secs, len(lat), errors, len(lat) / secs,
                      percentile(ms, 50), percentile(ms, 95), percentile(ms, 99))


def run_load(tool: str, url: str, image: Path, concurrency: int, seconds: int) -> LoadResult:
    if tool == "wrk":
        return run_wrk(url, image, concurrency, seconds)
    return run_python(url, image.read_bytes(), concurrency, seconds)


async def _ingest(url: str, batches: list[list[Img]], classes: list[str], concurrency: int,
                  timeout_s: float) -> dict[str, Any]:
    queue: asyncio.Queue[list[Img]] = asyncio.Queue()
    for b in batches:
        queue.put_nowait(b)
    latencies: list[float] = []
    counts = {"added": 0, "duplicates": 0, "failed_requests": 0}
    async with httpx.AsyncClient(timeout=timeout_s) as client:

        async def worker() -> None:
            while not queue.empty():
                batch = queue.get_nowait()
                files = [("files", (im.name, im.data, "application/octet-stream")) for im in batch]
                # One label field per file; empty means "use the predicted class".
                labels = [im.label if im.label in classes else "" for im in batch]
                t0 = time.perf_counter()
                r = await client.post(url, files=files, data={"label": labels})
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    counts["failed_requests"] += 1
                    log.warning("/index answered %d: %s", r.status_code, r.text[:200])
                    continue
                for item in r.json()["items"]:
                    counts["duplicates" if item["duplicate"] else "added"] += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    ms = [x * 1e3 for x in latencies]
    return {**counts, "requests": len(batches), "seconds": wall,
            "images_per_s": counts["added"] / wall, "request_p50_ms": percentile(ms, 50),
            "request_p95_ms": percentile(ms, 95)}


def ingest_http(url: str, images: list[Img], batch: int, concurrency: int,
                classes: list[str], timeout_s: float = 120.0) -> dict[str, Any]:
    batches = [images[i : i + batch] for i in range(0, len(images), batch)]
    return asyncio.run(_ingest(url, batches, classes, concurrency, timeout_s))
