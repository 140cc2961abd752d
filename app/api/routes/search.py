"""``POST /search``: classify the query image, then rank stored images by similarity."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Query, UploadFile

from app.api.deps import RetrieverDep, require_read_key
from app.api.schemas import UPLOAD_ERRORS, Prediction, SearchHit, SearchResponse

router = APIRouter(tags=["search"])


def elapsed_ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 2)


@router.post(
    "/search",
    response_model=SearchResponse,
    dependencies=[Depends(require_read_key)],
    responses=UPLOAD_ERRORS,
    summary="Find the stored images most similar to a query image",
)
async def search(
    retriever: RetrieverDep,
    file: Annotated[UploadFile, File(description="the query image")],
    k: Annotated[int, Query(ge=1, le=1000, description="number of results")] = 10,
    scope: Annotated[
        Literal["predicted", "all"],
        Query(description="search the predicted class (the paper's method) or everything"),
    ] = "predicted",
    label: Annotated[
        str | None, Query(description="search this class instead (overrides scope)")
    ] = None,
) -> SearchResponse:
    t0 = time.perf_counter()
    data = await file.read()
    out = await retriever.search(data, k, scope, label)
    return SearchResponse(
        prediction=Prediction(
            label=out.label, confidence=out.confidence, probabilities=out.probabilities
        ),
        scope=out.scope,
        results=[
            SearchHit(id=h.id, score=h.score, label=h.label, image_url=f"/images/{h.id}",
                      metadata=h.metadata)
            for h in out.hits
        ],
        took_ms=elapsed_ms(t0),
    )
