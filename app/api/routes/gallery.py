"""The gallery as data: ``GET /images`` (a filtered list, paged by an opaque cursor),
``GET /images/{id}/info`` (one item) and ``PATCH /images/{id}`` (curate its label).

The cursor is keyset paging on the id (newest first): an item added while a client pages
never shifts a page, and an item deleted is simply not there. It is opaque so that what it
holds may change without breaking clients.
"""

from __future__ import annotations

import base64
import binascii
import inspect
import re
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from app.api.deps import RetrieverDep, require_read_key, require_write_key
from app.api.routes.images import ItemId
from app.api.schemas import (
    DeletedResponse,
    DicomInfo,
    ErrorResponse,
    ImageItem,
    ImageListResponse,
    RelabelRequest,
)
from app.service.errors import InvalidInput
from app.service.links import Links
from app.service.store import Item, ItemFilter

router = APIRouter(tags=["images"])

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (401, 404, 422, 503)
}
_CURSOR = re.compile(r"i:([1-9][0-9]{0,18})")
# A DICOM UID: digits and dots, at most 64 characters (PS3.5 9.1).
Uid = Annotated[str | None, Query(pattern=r"^[0-9][0-9.]{0,63}$", description="a DICOM UID")]


def encode_cursor(before: int) -> str:
    return base64.urlsafe_b64encode(f"i:{before}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        text = ""
    match = _CURSOR.fullmatch(text)
    if match is None or int(match[1]) > 2**63 - 1:
        raise InvalidInput("cursor: not a cursor this service gave out (use next_cursor)")
    return int(match[1])


def _once(request: Request) -> None:
    """A filter given twice is refused: only one of its values would be used."""
    for name in request.query_params:
        if len(request.query_params.getlist(name)) > 1:
            raise InvalidInput(f"query parameter {name!r} given more than once")


def image_item(item: Item, links: Links) -> ImageItem:
    return ImageItem(id=item.id, label=item.label, image_url=f"/images/{item.id}",
                     metadata=item.metadata, label_source=item.label_source,
                     in_distribution=item.in_distribution, dicom=DicomInfo.of(item.dicom),
                     wado_url=links.wado_url(item.dicom, item.wado_url),
                     viewer_url=links.viewer_url(item.dicom))


@router.get(
    "/images",
    response_model=ImageListResponse,
    dependencies=[Depends(require_read_key)],
    responses=_ERRORS,
    summary="List stored images, newest first, filtered and paged",
)
async def list_images(
    request: Request,
    retriever: RetrieverDep,
    label: Annotated[str | None, Query(description="only this class")] = None,
    label_source: Annotated[
        Literal["given", "predicted"] | None, Query(description="only labels given or predicted")
    ] = None,
    modality: Annotated[
        str | None, Query(min_length=1, max_length=64, description="DICOM modality (CT, MR, ...)")
    ] = None,
    in_distribution: Annotated[
        bool | None, Query(description="only images judged in (true) or out of (false) the "
                           "model's distribution when stored")
    ] = None,
    study_uid: Uid = None,
    series_uid: Uid = None,
    sop_uid: Uid = None,
    limit: Annotated[int, Query(ge=1, le=500, description="items per page")] = 50,
    cursor: Annotated[
        str | None,
        Query(min_length=1, max_length=64, description="next_cursor of the previous page"),
    ] = None,
) -> ImageListResponse:
    # A misspelt filter must not quietly list everything.
    unknown = sorted(set(request.query_params) - _LIST_PARAMS)
    if unknown:
        raise InvalidInput(
            f"unknown query parameter {unknown[0]!r}; known: {', '.join(sorted(_LIST_PARAMS))}"
        )
    _once(request)
    if label is not None and label not in retriever.classes:
        raise InvalidInput(f"unknown label {label!r}; known: {', '.join(retriever.classes)}")
    before = decode_cursor(cursor) if cursor is not None else None
    filt = ItemFilter(label=label, label_source=label_source, modality=modality,
                      in_distribution=in_distribution, study_uid=study_uid,
                      series_uid=series_uid, sop_uid=sop_uid)
    # One more than asked: whether there is a next page, without a second count.
    rows, total = await run_in_threadpool(retriever.list_items, filt, before, limit + 1)
    page = rows[:limit]
    more = len(rows) > limit
    return ImageListResponse(
        items=[image_item(it, retriever.links) for it in page], total=total,
        next_cursor=encode_cursor(page[-1].id) if more else None,
    )


_LIST_PARAMS = frozenset(inspect.signature(list_images).parameters) - {"request", "retriever"}


@router.delete(
    "/images",
    response_model=DeletedResponse,
    dependencies=[Depends(require_write_key)],
    responses=_ERRORS,
    summary="Delete a study or a series",
)
async def delete_images(
    request: Request,
    retriever: RetrieverDep,
    study_uid: Uid = None,
    series_uid: Uid = None,
) -> DeletedResponse:
    """A filter is required: ``study_uid`` (the whole study) or ``series_uid``; both
    together delete that series if it belongs to that study."""
    unknown = sorted(set(request.query_params) - {"study_uid", "series_uid"})
    if unknown:
        raise InvalidInput(f"unknown query parameter {unknown[0]!r}; known: series_uid, "
                           "study_uid")
    _once(request)
    filt = ItemFilter(study_uid=study_uid, series_uid=series_uid)
    return DeletedResponse(deleted=await run_in_threadpool(retriever.delete_where, filt))


@router.get(
    "/images/{item_id}/info",
    response_model=ImageItem,
    dependencies=[Depends(require_read_key)],
    responses=_ERRORS,
    summary="One stored image's label and metadata",
)
async def image_info(retriever: RetrieverDep, item_id: ItemId) -> ImageItem:
    return image_item(await run_in_threadpool(retriever.get, item_id), retriever.links)


@router.patch(
    "/images/{item_id}",
    response_model=ImageItem,
    dependencies=[Depends(require_write_key)],
    responses={400: {"model": ErrorResponse}, **_ERRORS},  # 400: a body that is not JSON
    summary="Relabel a stored image",
)
async def relabel_image(
    retriever: RetrieverDep, item_id: ItemId, body: RelabelRequest
) -> ImageItem:
    """The label must be one of the model's classes; it becomes ``label_source: given`` and
    the image moves to that class's index (durably: SQLite first, then the index)."""
    return image_item(await run_in_threadpool(retriever.relabel, item_id, body.label),
                      retriever.links)
