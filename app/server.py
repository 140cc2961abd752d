"""``cbmir serve``: run the app under uvicorn, one process by default (the model and index
live in it); ``--workers N``: N processes on one socket, on either backend (the embedded
one's design is in :mod:`app.service.workers`).

Uvicorn turns SIGTERM/SIGINT into a graceful shutdown, which runs the lifespan exit: the
batcher drains and the index is snapshotted. A failure while loading stops the server and
surfaces here as a one-line ``ValueError`` (the CLI prints it and exits 2).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from types import FrameType
from typing import Any

from app.config import Settings

log = logging.getLogger(__name__)

# Heavy modules (torch, faiss, uvicorn) are imported inside the functions: the CLI imports
# this module before validating settings, and a bad setting should fail fast and quietly.


def _stopped(signum: int, frame: FrameType | None) -> None:
    log.info("stopped by signal %d", signum)


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def large_allocations_from_mmap(threshold: int = 1 << 20) -> None:
    """Serve allocations over ``threshold`` bytes by mmap, so freeing them returns them.

    glibc raises its mmap threshold after each large free (up to 32 MB) and from then on
    carves such buffers (decoded images, their float copies) out of per-thread heaps that
    it keeps: after 16 concurrent 6000x6000 PNG searches the server's RSS stayed at
    1.3 GiB with 408 MB ever reserved by decodes; with a fixed threshold its peak was
    821 MiB and it fell back to 392 MiB (bench/RESULTS.md, "Memory"). No-op elsewhere.
    """
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, threshold)


def preflight(settings: Settings) -> None:
    """The cheap start-up checks, done before the port opens so errors are immediate."""
    from app.service.lock import DataDirLock
    from app.service.store import DB_FILE, Store
    from models.checkpoint import load_config

    if settings.database_url is not None:
        # Shared backend: no data-dir lock; an unreachable database is one line, no password.
        from app.service.pg.db import check_reachable

        check_reachable(settings.database_url.get_secret_value(), settings.pg_timeout_s)
        return
    DataDirLock(settings.data_dir).acquire().release()
    if (settings.data_dir / DB_FILE).is_file():
        cfg = load_config(settings.model_dir)
        store = Store(settings.data_dir)
        try:
            store.check_model(cfg.fingerprint, cfg.embedding_dim, cfg.name)
        finally:
            store.close()


def _process_setup(settings: Settings) -> None:
    """What every serving process sets before it loads anything."""
    logging.getLogger("app").setLevel(settings.log_level)
    # faiss announces at INFO which CPU build it loaded, on every start.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    large_allocations_from_mmap()
    # The batcher thread, the decoding threads and the event loop take turns on the GIL;
    # a thread that has finished C work (a forward pass, a decode) waits up to one switch
    # interval to get it back. The interpreter's 5 ms default is tuned for throughput of
    # CPU-bound Python threads, not for millisecond-scale request hand-offs.
    sys.setswitchinterval(settings.switch_interval_ms / 1000.0)
    import torch

    torch.set_num_threads(settings.torch_threads)


def worker_app() -> Any:
    """The app of one ``--workers`` process (uvicorn's factory; settings from the env)."""
    from app.config import load_settings
    from app.main import create_app

    settings = load_settings()
    # A spawned process: the CLI's logging set-up did not come with it. The pid tells
    # the workers' lines apart.
    logging.basicConfig(level=logging.INFO, datefmt="%H:%M:%S",
                        format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")
    logging.getLogger("faiss").setLevel(logging.WARNING)
    if settings.embedded_workers:
        from app.service.workers import die_with_parent

        die_with_parent()
    from app.service.metrics import start_worker_metrics

    start_worker_metrics()  # before create_app makes the metrics
    _process_setup(settings)
    return create_app(settings)


def _uvicorn_options(settings: Settings) -> dict[str, Any]:
    # loop/http "auto" pick uvloop and httptools (uvicorn[standard]) over asyncio and h11:
    # less CPU per request on the event loop, which is what the HTTP floor measures.
    # The access log is off unless asked for: a formatted line per request costs the
    # event loop time, and cbmir_http_requests already counts every request.
    return {"log_level": settings.log_level.lower(), "timeout_graceful_shutdown": 30,
            "server_header": False, "access_log": settings.access_log, "loop": "auto",
            "http": "auto"}


def run_server(settings: Settings, host: str = "127.0.0.1", port: int = 8000,
               workers: int = 1) -> None:
    import uvicorn

    from app.main import create_app

    if workers < 1:
        raise ValueError("--workers must be at least 1")
    preflight(settings)
    if workers > 1 and not settings.shared_backend:
        _run_embedded_workers(settings, host, port, workers)
        return
    if workers > 1:
        _run_workers(settings, host, port, workers)
        return
    _process_setup(settings)
    fatal: list[str] = []
    server: uvicorn.Server | None = None

    def on_fatal(message: str) -> None:
        fatal.append(message)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_fatal=on_fatal)
    config = uvicorn.Config(app, host=host, port=port, workers=1, **_uvicorn_options(settings))
    server = uvicorn.Server(config)
    log.info("serving on http://%s:%d (data in %s)", host, port, _where(settings))
    # Uvicorn shuts down gracefully on SIGTERM, then re-raises the signal so the process
    # dies "by signal". A stop on SIGTERM is the normal end of a service: exit 0 instead.
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stopped) if in_main else None
    try:
        server.run()
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    if fatal:
        raise ValueError(fatal[0])


def _run_workers(settings: Settings, host: str, port: int, workers: int) -> None:
    """N independent processes on one listening socket (uvicorn's supervisor), each with
    its own model and batcher, all against the one database (or data dir). A worker
    that fails to load answers 503 ``failed`` on ``/health``; the supervisor restarts
    workers that die."""
    import os

    import uvicorn

    from app.service.metrics import shared_metrics_dir
    from app.supervisor import Supervisor

    # The workers read their settings from the environment (uvicorn spawns them): this one
    # tells them they are N (the X-Cbmir-Worker header; on the embedded backend, more).
    os.environ["CBMIR_SUPERVISED_WORKERS"] = str(workers)
    config = uvicorn.Config("app.server:worker_app", factory=True, host=host, port=port,
                            workers=workers, **_uvicorn_options(settings))
    log.info("serving on http://%s:%d with %d workers (data in %s)", host, port, workers,
             _where(settings))
    # Before the first worker is spawned: each one's metrics go to files there, which any
    # worker merges when scraped (app.service.metrics).
    with shared_metrics_dir() as metrics_dir:
        Supervisor(config, sockets=[config.bind_socket()], metrics_dir=metrics_dir).run()


def _run_embedded_workers(settings: Settings, host: str, port: int, workers: int) -> None:
    """The supervisor of N workers on one data dir (:mod:`app.service.workers`): it holds
    the data dir's lock for its whole life, and creates or migrates the store and removes
    orphaned originals once, before any worker starts."""
    from app.service.lock import DataDirLock
    from app.service.store import Store

    lock = DataDirLock(settings.data_dir).acquire()
    try:
        store = Store(settings.data_dir)
        try:
            store.clean_orphans()
        finally:
            store.close()
        _run_workers(settings, host, port, workers)
    finally:
        lock.release()


def _where(settings: Settings) -> str:
    if settings.database_url is None:
        return str(settings.data_dir)
    from app.service.pg.db import redact

    return redact(settings.database_url.get_secret_value())
