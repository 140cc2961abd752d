"""``GET /metrics``: Prometheus text format (always open, like ``/health``)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from app.api.deps import MetricsDep
from app.service.metrics import CONTENT_TYPE

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus exposition"}},
)
async def metrics(m: MetricsDep) -> Response:
    # On the event loop: every gauge read at scrape time is lock-free (Metrics.track).
    return Response(m.render(), media_type=CONTENT_TYPE)
