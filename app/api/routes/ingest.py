"""``POST /index``: add images (multipart ``files``, optional ``label`` and ``metadata``)."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, UploadFile

from app.api.deps import RetrieverDep, SettingsDep, require_write_key
from app.api.errors import TooManyFiles
from app.api.schemas import UPLOAD_ERRORS, IndexedItem, IndexResponse
from app.service.errors import InvalidInput
from app.service.uploads import Upload

router = APIRouter(tags=["index"])

MAX_METADATA_DEPTH = 16


def _labels(given: list[str] | None, n: int) -> list[str | None]:
    if not given:
        return [None] * n
    if len(given) != n:
        raise InvalidInput(f"got {len(given)} label fields for {n} files: send one per file")
    # An empty label field keeps a file's place and means "use the predicted class".
    return [lab.strip() or None for lab in given]


def _wado_urls(given: list[str] | None, n: int) -> list[str | None]:
    if not given:
        return [None] * n
    if len(given) != n:
        raise InvalidInput(f"got {len(given)} wado_url fields for {n} files: send one per file")
    out: list[str | None] = []
    for i, url in enumerate(given):
        url = url.strip()
        if url and (not url.startswith(("http://", "https://")) or len(url) > 2000
                    or any(not c.isprintable() or c.isspace() for c in url)):
            raise InvalidInput(f"wado_url field {i + 1} is not an http(s) URL")
        out.append(url or None)
    return out


def _metadata(given: list[str] | None, n: int) -> list[dict[str, Any]]:
    if not given:
        return [{} for _ in range(n)]
    if len(given) not in (1, n):
        raise InvalidInput(
            f"got {len(given)} metadata fields for {n} files: send one per file, or one for all"
        )
    parsed: list[dict[str, Any]] = []
    for i, text in enumerate(given):
        what = f"metadata field {i + 1}"
        try:
            value = (
                json.loads(text, parse_constant=_no_constant, parse_float=_finite)
                if text.strip() else {}
            )
        except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested very deep
            raise InvalidInput(f"{what} is not valid JSON") from None
        if not isinstance(value, dict):
            raise InvalidInput(f"{what} must be a JSON object")
        _check_stored_form(value, what)
        parsed.append(value)
    return parsed * n if len(parsed) == 1 else parsed


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity: Python's json accepts them


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999
        raise ValueError("number out of range")
    return value


def _check_stored_form(value: dict[str, Any], what: str) -> None:
    """Metadata is stored and returned with every search hit, so it must be something a
    response can always encode: a bounded depth (the response serializer recurses) and no
    lone surrogates (``"\\ud800"`` parses, but cannot be written as UTF-8)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_METADATA_DEPTH:
            raise InvalidInput(f"{what} is nested deeper than {MAX_METADATA_DEPTH} levels")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{what} holds text that is not valid Unicode") from None


@router.post(
    "/index",
    response_model=IndexResponse,
    dependencies=[Depends(require_write_key)],
    responses=UPLOAD_ERRORS,
    summary="Add images to the gallery",
)
async def index_images(
    retriever: RetrieverDep,
    settings: SettingsDep,
    files: Annotated[list[UploadFile], File(description="one or more images")],
    label: Annotated[
        list[str] | None, Form(description="one per file, in order; omitted: predicted")
    ] = None,
    metadata: Annotated[
        list[str] | None, Form(description="a JSON object per file, or one for all")
    ] = None,
    wado_url: Annotated[
        list[str] | None,
        Form(description="one per file, in order (empty: none): the WADO-RS URL an archive "
             "serves the DICOM instance at"),
    ] = None,
) -> IndexResponse:
    """All-or-nothing: every file is checked and decoded before anything is stored.

    The same bytes sent again return the existing id with ``duplicate: true``.
    """
    if len(files) > settings.max_files:
        raise TooManyFiles(
            f"{len(files)} files in one request; the limit is {settings.max_files}"
        )
    labels = _labels(label, len(files))
    metas = _metadata(metadata, len(files))
    wados = _wado_urls(wado_url, len(files))
    uploads = [
        Upload(await f.read(), f.filename or "", lab, meta, wado)
        for f, lab, meta, wado in zip(files, labels, metas, wados, strict=True)
    ]
    items = await retriever.ingest(uploads)
    return IndexResponse(items=[
        IndexedItem(id=it.id, label=it.label, label_source=it.label_source,
                    duplicate=it.duplicate, in_distribution=it.in_distribution)
        for it in items
    ])
