"""``POST /render``: the PNG the service would make of an upload; stores nothing.

The web page shows a query as the service sees it (a DICOM file windowed, a 16-bit PNG
scaled), which a browser cannot draw by itself.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, UploadFile
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from app.api.deps import RetrieverDep, require_read_key
from app.api.schemas import UPLOAD_ERRORS

router = APIRouter(tags=["search"])


@router.post(
    "/render",
    response_class=Response,
    dependencies=[Depends(require_read_key)],
    responses={200: {"content": {"image/png": {}}, "description": "PNG"}, **UPLOAD_ERRORS},
    summary="Render an image as the service would, without storing it",
)
async def render(
    retriever: RetrieverDep, file: Annotated[UploadFile, File(description="an image")]
) -> Response:
    png = await run_in_threadpool(retriever.render, await file.read())
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})
