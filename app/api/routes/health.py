"""``GET /health``: 503 while the model and index load, then what is loaded."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.api.schemas import HealthResponse, StartingResponse

router = APIRouter(tags=["health"])
# How long /health and /metrics wait for this worker's write lock to apply other workers'
# commits (--workers N) before answering with the counts they have.
CATCH_UP_WAIT_S = 1.0


@router.get(
    "/health",
    response_model=HealthResponse,
    responses={503: {"model": StartingResponse, "description": "still loading, or failed"}},
)
async def health(request: Request) -> HealthResponse | JSONResponse:
    # On the event loop, not the thread pool: it reads no lock (Retriever.health), so it
    # cannot wait behind a write, a snapshot or a rebuild, nor for a free worker thread.
    loader = request.app.state.loader
    if loader.retriever is None:
        body = StartingResponse(status="failed", detail=loader.error) if loader.error else (
            StartingResponse(status="starting")
        )
        return JSONResponse(
            body.model_dump(exclude_none=True), status_code=503, headers={"Retry-After": "1"}
        )
    retriever = loader.retriever
    if retriever.behind():  # --workers N: count what another worker just committed
        await anyio.to_thread.run_sync(retriever.catch_up, CATCH_UP_WAIT_S)
    return HealthResponse.model_validate(retriever.health())
