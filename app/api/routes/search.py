"""``POST /search``: classify the query image, then rank stored images by similarity;
``GET /images/{id}/similar``: the same for a stored image."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Query, Response, UploadFile

from app.api.deps import RetrieverDep, require_read_key
from app.api.routes.gallery import Uid
from app.api.routes.images import ItemId
from app.api.schemas import (
    UPLOAD_ERRORS,
    DicomInfo,
    ErrorResponse,
    Prediction,
    SearchHit,
    SearchResponse,
)
from app.service.links import Links
from app.service.search import SearchOptions, SearchOutcome

router = APIRouter(tags=["search"])


def elapsed_ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 2)


# Shared by /search and /images/{id}/similar, which answer with the same model.
TopK = Annotated[int, Query(ge=1, le=1000, description="number of results")]
LabelOverride = Annotated[
    str | None, Query(description="search this class instead (overrides scope)")
]

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
    k: TopK = 10,
    scope: Annotated[
        Literal["predicted", "all"],
        Query(description="search the predicted class (the paper's method) or everything"),
    ] = "predicted",
    label: LabelOverride = None,
    group_by: Annotated[
        Literal["series"] | None,
        Query(description="series: up to k series, each as its best slice, with series_hits"),
    ] = None,
    exclude_study: Uid = None,
    exclude_same_study: Annotated[
        bool, Query(description="a DICOM query: leave its own study out")
    ] = False,
) -> Response:
    t0 = time.perf_counter()
    data = await file.read()
    options = SearchOptions(group_by, exclude_study, exclude_same_study)
    out = await retriever.search(data, k, scope, label, options)
    # Serialised here, by pydantic-core, in one pass: returned as a model, FastAPI would
    # dump, re-validate and re-encode it (about a third of the HTTP floor's time per
    # request). response_model above still documents and types the body.
    body = search_response(out, t0, retriever.links).model_dump_json()
    return Response(body, media_type="application/json")


@router.get(
    "/images/{item_id}/similar",
    response_model=SearchResponse,
    dependencies=[Depends(require_read_key)],
    responses={code: {"model": ErrorResponse} for code in (401, 404, 422, 503)},
    summary="Find the stored images most similar to a stored image",
)
async def similar(
    retriever: RetrieverDep,
    item_id: ItemId,
    k: TopK = 10,
    scope: Annotated[
        Literal["predicted", "all"],
        Query(description="the class the model predicts for the image, or everything"),
    ] = "predicted",
    label: LabelOverride = None,
) -> SearchResponse:
    """The answer ``POST /search`` gives for the stored image, ranked by its stored vector,
    the image itself left out."""
    t0 = time.perf_counter()
    out = await retriever.similar(item_id, k, scope, label)
    return search_response(out, t0, retriever.links)


def search_response(out: SearchOutcome, t0: float, links: Links) -> SearchResponse:
    return SearchResponse(
        prediction=Prediction(
            label=out.label, confidence=out.confidence, probabilities=out.probabilities,
            in_distribution=out.verdict.in_distribution, ood_score=out.verdict.score,
            ood_threshold=out.verdict.threshold,
        ),
        scope=out.scope,
        results=[
            SearchHit(id=h.id, score=h.score, label=h.label, image_url=f"/images/{h.id}",
                      metadata=h.metadata, label_source=h.label_source,
                      dicom=DicomInfo.of(h.dicom), wado_url=links.wado_url(h.dicom, h.wado_url),
                      viewer_url=links.viewer_url(h.dicom), series_hits=h.series_hits)
            for h in out.hits
        ],
        warnings=out.warnings,
        took_ms=elapsed_ms(t0),
    )
