"""The pure ASGI middlewares: the request-size limit, the Prometheus HTTP metrics, and
the worker header of ``cbmir serve --workers N``.

Both are hand-written on purpose, after looking at the libraries that do the job; each
class says why it is kept.
"""

from __future__ import annotations

import json
import time

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.service.metrics import Metrics


class _BodyTooLarge(Exception):
    pass


async def _send_error(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close")],
    })
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Request-size limit enforced while the body streams, so a huge upload is never held
    whole: ``Content-Length`` over the limit is refused before a byte is read; a body
    without one (chunked) is counted as it arrives and cut off with 413 as soon as it
    passes the limit.

    Why not Starlette's ``RequestBodyLimitMiddleware`` (FastAPI's ``max_body_size``)? It
    also counts while streaming, but it answers ``Content Too Large`` (plain text, or that
    fixed detail through the exception handlers) where this service documents a JSON
    one-line reason naming ``CBMIR_MAX_UPLOAD_MB``; it lets a malformed ``Content-Length``
    through where this answers 400; it waits for the app to read or answer before refusing
    an oversized declared length, and it does not close the connection after a refusal.
    The responses would change, so this stays.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        mb = max_bytes / (1024 * 1024)
        self.detail = f"request body is larger than the {mb:g} MB limit (CBMIR_MAX_UPLOAD_MB)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await _send_error(send, 400, "invalid Content-Length header")
                return
            if declared > self.max_bytes:
                await _send_error(send, 413, self.detail)
                return

        received = 0
        exceeded = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                raise _BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            # Whatever the app made of the aborted body (FastAPI turns a failed form parse
            # into a 400) is replaced by our 413.
            if exceeded and not started:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _BodyTooLarge:
            pass
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await _send_error(send, 413, self.detail)


class MetricsMiddleware:
    """Pure ASGI middleware (no body buffering) counting and timing every HTTP request.

    Requests are labelled by route *template* (``/images/{item_id}``), never the raw path,
    so the number of series stays bounded whatever clients send.

    Why not prometheus-fastapi-instrumentator or starlette-exporter? Both would rename the
    series dashboards already read: ``http_requests_total{handler,status="2xx"}`` and
    ``starlette_requests_total{path,status_code}`` against this service's
    ``cbmir_http_requests_total{method,route,status}`` and
    ``cbmir_http_request_duration_seconds`` (with its own buckets, in the app's own
    registry). Keeping the names would mean configuring away most of what they add, for
    about thirty lines of code.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        t0 = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # The router stores the matched route in the (shared) scope; unmatched paths
            # share one label so a scanner cannot create unbounded series.
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - t0)


class WorkerHeaderMiddleware:
    """``X-Cbmir-Worker: <pid>`` on every answer of one of N worker processes, so a client
    (or a test) can tell which worker answered. Added only under ``--workers N``."""

    def __init__(self, app: ASGIApp, pid: int) -> None:
        self.app = app
        self.header = (b"x-cbmir-worker", str(pid).encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), self.header]
            await send(message)

        await self.app(scope, receive, send_with_header)
