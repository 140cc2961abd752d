"""The one place where exceptions become HTTP answers.

Every error body is ``{"detail": "<one line>"}``. Bad input must never surface as a 500:
the exceptions the service and the decoder raise on purpose carry no status of their own,
and :data:`HTTP_STATUS` below gives each its answer; validation errors are flattened to
one line, and only an unexpected exception (a bug) reaches the catch-all, which logs it.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.service.errors import (
    ArchiveFailed,
    InvalidInput,
    NotFound,
    ServiceError,
    StorageFull,
    Unavailable,
)
from models.imaging.errors import ImageDecodeError, ImageTooLargeError, UnsupportedFormatError

log = logging.getLogger(__name__)


class Unauthorized(ServiceError):
    """A missing or wrong ``X-API-Key`` where the key is required."""


class TooManyFiles(ServiceError):
    """More files in one ``POST /index`` than ``CBMIR_MAX_FILES``."""


Headers = dict[str, str] | None

HTTP_STATUS: dict[type[Exception], tuple[int, Headers]] = {
    # Decoding (models.imaging).
    UnsupportedFormatError: (415, None),  # UnsupportedTransferSyntaxError included
    ImageTooLargeError: (413, None),
    ImageDecodeError: (422, None),  # CorruptImageError, and any other decode failure
    # The service (app.service) and this layer.
    InvalidInput: (422, None),
    NotFound: (404, None),
    TooManyFiles: (413, None),
    Unauthorized: (401, {"WWW-Authenticate": "X-API-Key"}),
    Unavailable: (503, {"Retry-After": "1"}),  # batcher.Overloaded included
    StorageFull: (507, None),  # Insufficient Storage: the write was not kept
    ArchiveFailed: (502, None),  # Bad Gateway: the archive failed us
}
"""Status and extra headers per exception class, looked up along the class's bases, so a
subclass answers like the nearest listed one."""


def http_status(exc: BaseException) -> tuple[int, Headers]:
    """The answer :data:`HTTP_STATUS` gives ``exc`` (422 for an unlisted refusal)."""
    for cls in type(exc).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 422, None


def error_response(status: int, detail: str, headers: Headers = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _validation_detail(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "invalid request"
    first: dict[str, Any] = errors[0]
    loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    msg = str(first.get("msg", "invalid value"))
    return f"{loc}: {msg}" if loc else msg


async def _refused(request: Request, exc: Exception) -> JSONResponse:
    status, headers = http_status(exc)
    if status == 401:
        # Logged here because the access log is off by default (CBMIR_ACCESS_LOG): a failed
        # key is worth a line of its own. Never the key itself.
        log.warning("401 %s %s: missing or invalid X-API-Key", request.method,
                    request.url.path)
    return error_response(status, str(exc).splitlines()[0], headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, _validation_detail(exc))


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}) or None)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # A true bug: log with traceback (never the body), answer without internals.
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal server error")


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _refused)
    app.add_exception_handler(ImageDecodeError, _refused)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
