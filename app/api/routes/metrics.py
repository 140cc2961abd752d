"""``GET /metrics``: Prometheus text format (always open, like ``/health``)."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.deps import MetricsDep
from app.api.routes.health import CATCH_UP_WAIT_S
from app.service.metrics import CONTENT_TYPE

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus exposition"}},
)
async def metrics(m: MetricsDep, request: Request) -> Response:
    # On the event loop: every gauge read at scrape time is lock-free (Metrics.track).
    retriever = request.app.state.loader.retriever
    if retriever is not None and retriever.behind():  # --workers N, as /health does
        await anyio.to_thread.run_sync(retriever.catch_up, CATCH_UP_WAIT_S)
    return Response(m.render(), media_type=CONTENT_TYPE)
