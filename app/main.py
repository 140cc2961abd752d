"""The FastAPI application: ``create_app(settings)``.

The lifespan starts loading (model, store, index reconciliation, demo seeding) in a
background thread, so the server answers ``/health`` (503 ``starting``) at once and every
other route with 503 + ``Retry-After`` until the retriever is ready.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app.api.errors import install_handlers
from app.api.middleware import BodyLimitMiddleware, MetricsMiddleware, WorkerHeaderMiddleware
from app.api.routes import routers
from app.api.routes.web import mount_web_files
from app.config import Settings, load_settings
from app.service.bulk import seed_demo
from app.service.metrics import Metrics
from app.service.retriever import Retriever

log = logging.getLogger(__name__)

DESCRIPTION = (
    "Content-based medical image retrieval (Qayyum et al. 2017): a CNN classifies the query, "
    "then its descriptor is compared with stored images of the predicted class."
)


class Loader:
    """Loads the retriever off the event loop; ``done`` is set when it succeeded or failed."""

    def __init__(
        self, settings: Settings, metrics: Metrics, on_fatal: Callable[[str], None] | None
    ) -> None:
        self.settings, self.metrics, self.on_fatal = settings, metrics, on_fatal
        self.retriever: Retriever | None = None
        self.error: str | None = None
        self.done = threading.Event()
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="cbmir-loader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            retriever = Retriever.open(self.settings, self.metrics)
            try:
                if self.settings.seed_demo:
                    seed_demo(retriever, cancel=self._cancel)
            except BaseException:
                retriever.close()
                raise
            with self._lock:
                if self._cancel.is_set():  # shut down while loading
                    retriever.close()
                    return
                self.retriever = retriever
            log.info("ready: %d images indexed", len(retriever.index))
        except Exception as e:
            self.error = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            log.error("startup failed: %s", self.error, exc_info=not isinstance(e, ValueError))
            if self.on_fatal is not None:
                self.on_fatal(self.error)
        finally:
            self.done.set()

    def stop(self, timeout: float = 60.0) -> None:
        self._cancel.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._lock:
            retriever, self.retriever = self.retriever, None
        if retriever is not None:
            retriever.close()


def create_app(
    settings: Settings | None = None, *, on_fatal: Callable[[str], None] | None = None
) -> FastAPI:
    """``on_fatal`` is called with a one-line message if loading fails (the server exits)."""
    settings = settings or load_settings()
    # One of N supervised workers: a scrape reports them all (app.service.metrics).
    metrics = Metrics(multiprocess=settings.supervised_workers > 1)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = Loader(settings, metrics, on_fatal)
        app.state.loader = loader
        loader.start()
        if settings.embedded_workers:
            # One of N workers on a data dir: accept no connection until loaded, so a
            # restarted worker leaves them to the others instead of answering 503.
            await anyio.to_thread.run_sync(loader.done.wait)
            if loader.error:
                raise RuntimeError(f"worker failed to start: {loader.error}")
        try:
            yield
        finally:
            # Drains the batcher and writes the final index snapshot.
            await anyio.to_thread.run_sync(loader.stop)

    app = FastAPI(title="cbmir", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.loader = Loader(settings, metrics, None)  # not started: "starting" until lifespan
    install_handlers(app)
    for router in routers:
        app.include_router(router)
    mount_web_files(app)
    # Added innermost first: metrics sees every answer, 413s from the body limit included.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["X-API-Key", "Content-Type"],
        )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    if settings.supervised_workers > 1:  # which of the N processes answered (tests, ops)
        app.add_middleware(WorkerHeaderMiddleware, pid=os.getpid())
    return app
