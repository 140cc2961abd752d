"""``GET /images/{id}`` (PNG rendering or the original bytes), its small PNG
``GET /images/{id}/thumbnail``, and ``DELETE /images/{id}``.

The id is an integer looked up in SQLite; file paths come only from the stored sha256,
so nothing a client sends can name a file.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from app.api.deps import RetrieverDep, require_read_key, require_write_key
from app.api.schemas import ErrorResponse

router = APIRouter(tags=["images"])

ItemId = Annotated[int, Path(ge=1, le=2**63 - 1, description="id returned by POST /index")]
_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, 422: {"model": ErrorResponse},
}
# Ids are never reused, so an id's bytes never change.
_CACHE = {"Cache-Control": "private, max-age=86400", "X-Content-Type-Options": "nosniff"}


@router.get(
    "/images/{item_id}",
    response_class=Response,
    dependencies=[Depends(require_read_key)],
    responses={
        200: {"content": {"image/png": {}}, "description": "PNG, or the original bytes"},
        **_ERRORS,
    },
)
async def get_image(
    retriever: RetrieverDep,
    item_id: ItemId,
    original: Annotated[bool, Query(description="the stored original bytes")] = False,
) -> Response:
    if original:
        data, content_type = await run_in_threadpool(retriever.original, item_id)
        return Response(data, media_type=content_type, headers=_CACHE)
    png = await run_in_threadpool(retriever.png, item_id)
    return Response(png, media_type="image/png", headers=_CACHE)


@router.delete(
    "/images/{item_id}",
    status_code=204,
    response_class=Response,
    dependencies=[Depends(require_write_key)],
    responses=_ERRORS,
)
async def delete_image(retriever: RetrieverDep, item_id: ItemId) -> Response:
    await run_in_threadpool(retriever.delete, item_id)
    return Response(status_code=204)


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 weak comparison of ``If-None-Match`` (a list of tags, or ``*``)."""
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


@router.get(
    "/images/{item_id}/thumbnail",
    response_class=Response,
    dependencies=[Depends(require_read_key)],
    responses={
        200: {"content": {"image/png": {}}, "description": "PNG, longest side at most 256 px"},
        304: {"description": "If-None-Match names the current ETag"},
        **_ERRORS,
    },
)
async def get_thumbnail(
    retriever: RetrieverDep,
    item_id: ItemId,
    if_none_match: Annotated[str | None, Header(description="an ETag from before")] = None,
) -> Response:
    etag = await run_in_threadpool(retriever.thumbnail_etag, item_id)
    if etag_matches(if_none_match, etag):
        return Response(status_code=304, headers={**_CACHE, "ETag": etag})
    thumb = await run_in_threadpool(retriever.thumbnail, item_id)
    return Response(thumb.png, media_type="image/png", headers={**_CACHE, "ETag": thumb.etag})
