"""Section "service": the real service vs the HTTP floor under the same load, then the same
work in-process on the same data dir (/search pipeline and /index ingestion).

Besides the service as configured, variants (the same service with extra environment,
e.g. ``OMP_NUM_THREADS=1``, or ``WORKERS=2`` for ``cbmir serve --workers 2``) can run side
by side to test a setting without a code change. A server's CPU is that of its process and
all its descendants (the workers of ``--workers N``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.config import Settings
from app.service.search import Scope
from bench import profile, realistic, servers
from bench.common import loadavg, stop_process, thread_limit
from bench.data import ImageSets
from bench.http import ingest_http, run_load
from bench.observe import Snapshot, delta
from bench.pipeline import ingest_rate, open_retriever, search_throughput

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceConfig:
    levels: list[int]
    seconds: int
    tool: str  # "wrk" or "python"
    k: int = 10
    scope: Scope = "predicted"
    seed_demo: bool = True
    ingest_batch: int = 16
    ingest_clients: int = 4
    pipeline_batches: tuple[int, ...] = (1, 16, 64)
    pipeline_images: int = 256
    repeats: int = 3
    warmup_s: int = 1  # per server before the levels; 0: none
    start_timeout_s: float = 180.0
    # name -> extra environment of a variant service started beside the default one
    variants: dict[str, dict[str, str]] = field(default_factory=dict)
    # py-spy run on the service after the measured levels (0: none); raw stacks go here
    profile_seconds: int = 0
    profile_dir: Path | None = None
    kinds: bool = True  # realistic query images and the large-upload memory check


def _service_settings() -> dict[str, Any]:
    """The effective batching and index settings of the spawned service (env + defaults)."""
    # Reads CBMIR_* from the environment as the spawned service does.
    s = Settings.model_validate({"model_dir": Path(".")})
    return {"batch_max_size": s.batch_max_size, "batch_wait_ms": s.batch_wait_ms,
            "max_queue": s.max_queue, "index_type": s.index_type, "log_level": s.log_level}


def _measured(cfg: ServiceConfig, s: servers.Server, url: str, image: Path, c: int
              ) -> dict[str, Any]:
    """One load run, with the server's CPU use and (the service's) metrics deltas."""
    # /metrics of one of N workers is that worker's alone, and two scrapes may reach two
    # different workers: no per-request means from it for a --workers variant.
    several = int(cfg.variants.get(s.name, {}).get("WORKERS", "1")) > 1
    metrics_url = None if s.name == "floor" or several else s.url
    before = Snapshot.take(s.proc.pid, metrics_url)
    r = run_load(cfg.tool, url, image, c, cfg.seconds)
    after = Snapshot.take(s.proc.pid, metrics_url)
    return {**r.as_dict(), **delta(before, after, r.requests, r.seconds)}


def _load_levels(cfg: ServiceConfig, targets: list[servers.Server], image: Path
                 ) -> list[dict[str, Any]]:
    query = f"/search?k={cfg.k}&scope={cfg.scope}"
    for s in targets if cfg.warmup_s else []:
        # warm-up: connections, TorchScript profiling runs, oneDNN primitives
        run_load(cfg.tool, s.url + query, image, 4, cfg.warmup_s)
    rows = []
    for c in cfg.levels:
        # All targets back to back at each level, so drift hits them alike.
        res = {s.name: _measured(cfg, s, s.url + query, image, c) for s in targets}
        f, v = res["floor"], res["service"]
        log.info("/search c=%2d: service %5.0f req/s p50 %6.2f ms (%.1f ms CPU/req, batch %.1f)"
                 " | floor %5.0f req/s p50 %5.2f ms | %s (load %.1f)", c, v["throughput_rps"],
                 v["p50_ms"], v["cpu_ms_per_request"] or 0, v.get("mean_batch", 0),
                 f["throughput_rps"], f["p50_ms"], " ".join(
                     f"{n} {r['throughput_rps']:.0f} req/s p50 {r['p50_ms']:.2f} ms"
                     for n, r in res.items() if n not in ("floor", "service")), loadavg())
        rows.append({"concurrency": c, **res, "loadavg": loadavg()})
    return rows


def _profile(cfg: ServiceConfig, svc: servers.Server, image: Path, work: Path
             ) -> dict[str, Any]:
    """A separate run (so sampling cannot perturb the measured levels) at 16 clients."""
    c = 16 if 16 in cfg.levels else max(cfg.levels)
    raw = (cfg.profile_dir or work) / f"profile_search_c{c}.txt"
    rate = 100
    spy = profile.start(svc.proc.pid, cfg.profile_seconds, raw, rate)
    if spy is None:
        return {"error": "py-spy not installed (pip install -e '.[bench]')"}
    run_load(cfg.tool, f"{svc.url}/search?k={cfg.k}&scope={cfg.scope}", image, c,
             cfg.profile_seconds)
    err = profile.finish(spy, cfg.profile_seconds + 30)
    if err or not raw.is_file():
        return {"error": f"py-spy failed: {err}"}
    res = profile.summarize(raw, rate, cfg.profile_seconds)
    log.info("profile at c=%d: %s", c, ", ".join(f"{r} {v:.2f} cores"
                                                  for r, v in res["roles"].items()))
    return {"concurrency": c, "raw_stacks": raw.name, **res}


def _ingest(cfg: ServiceConfig, svc: servers.Server, sets: ImageSets, images: list[Any]
            ) -> dict[str, Any]:
    warm, timed = images[: cfg.ingest_batch], images[cfg.ingest_batch :]
    ingest_http(svc.url + "/index", warm, cfg.ingest_batch, 1, sets.classes)
    res = ingest_http(svc.url + "/index", timed, cfg.ingest_batch, cfg.ingest_clients,
                      sets.classes)
    log.info("/index on %s: %.0f img/s (%d added, %d duplicates, %d failed requests)",
             svc.name, res["images_per_s"], res["added"], res["duplicates"],
             res["failed_requests"])
    return res


@contextlib.contextmanager
def spawn_all(model_dir: Path, cfg: ServiceConfig, work: Path) -> Iterator[list[servers.Server]]:
    """The floor, then the service and its variants: spawned, not yet waited for."""
    seed = "true" if cfg.seed_demo else "false"
    with contextlib.ExitStack() as stack:
        floor = stack.enter_context(servers.floor(work))
        yield [floor, *(stack.enter_context(servers.service(
            model_dir, work / f"{name}-data", work, name, seed_demo=seed, **_split(env)))
            for name, env in {"service": {}, **cfg.variants}.items())]


def _split(variant: dict[str, str]) -> dict[str, Any]:
    """A variant's environment, and ``WORKERS=N`` (not a variable) as ``--workers N``."""
    env = {k: v for k, v in variant.items() if k != "WORKERS"}
    args = ("--workers", variant["WORKERS"]) if "WORKERS" in variant else ()
    return {"extra_env": env, "args": args}


def bench_service(model_dir: Path, sets: ImageSets, cfg: ServiceConfig, work: Path,
                  running: list[servers.Server] | None = None) -> dict[str, Any]:
    """``running``: servers from :func:`spawn_all` started earlier (quick runs overlap their
    start-up with other sections); by default they are started here."""
    image = work / "query.jpeg"
    image.write_bytes(sets.queries[0].data)
    half = len(sets.fresh) // 2
    fresh_http, fresh_local = sets.fresh[:half], sets.fresh[half:]
    out: dict[str, Any] = {"tool": cfg.tool, "k": cfg.k, "scope": cfg.scope,
                           "seconds_per_level": cfg.seconds, "settings": _service_settings(),
                           "query_image": sets.queries[0].name, "seed_demo": cfg.seed_demo,
                           "variants": cfg.variants, "ingest_clients": cfg.ingest_clients,
                           "spawned_early": running is not None}
    with contextlib.ExitStack() as stack:
        if running is None:
            running = stack.enter_context(spawn_all(model_dir, cfg, work))
        floor, svcs = running[0], running[1:]
        out["floor_start_s"] = floor.wait_healthy(60)
        for s in svcs:
            out[f"{s.name}_start_s"] = s.wait_healthy(cfg.start_timeout_s)
            log.info("%s healthy %.1fs after spawn (demo seeded: %s)", s.name,
                     out[f"{s.name}_start_s"], cfg.seed_demo)
        # Ingest first, so /search (here) and the in-process pipeline (below) see the
        # same gallery; every service gets the same images.
        log.info("/index: %d fresh images, %d per request, %d clients", len(fresh_http),
                 cfg.ingest_batch, cfg.ingest_clients)
        for s in svcs:
            out["ingest_http" if s.name == "service" else f"ingest_http_{s.name}"] = _ingest(
                cfg, s, sets, fresh_http)
        out["levels"] = _load_levels(cfg, [floor, *svcs], image)
        if cfg.kinds:
            out["kinds"] = realistic.by_kind(cfg.tool, floor, svcs[0], sets.queries[0].data,
                                             work, cfg.seconds)
            out["memory"] = realistic.large_uploads(svcs[0])
        if cfg.profile_seconds:
            out["profile"] = _profile(cfg, svcs[0], image, work)
        for s in running:  # started outside too: the data dir lock must be free below
            stop_process(s.proc, s.name)
    # Servers stopped (index snapshotted): the same data dir, opened in this process.
    retriever = open_retriever(model_dir, work / "service-data")
    try:
        out["gallery_size"] = len(retriever.index)
        out["pipeline"] = search_throughput(retriever, sets.queries[0].data,
                                            list(cfg.pipeline_batches), cfg.k, cfg.scope,
                                            cfg.pipeline_images, cfg.repeats)
        if cfg.variants:
            with thread_limit(torch_threads=1, faiss_threads=1):
                out["pipeline_1thread"] = search_throughput(
                    retriever, sets.queries[0].data, list(cfg.pipeline_batches), cfg.k, cfg.scope,
                    cfg.pipeline_images, cfg.repeats)
        out["ingest_local"] = ingest_rate(retriever, fresh_local, cfg.ingest_batch)
    finally:
        retriever.close()
    return out
