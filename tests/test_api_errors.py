"""app/api/errors.py: the one table from exceptions to HTTP answers, and its one-line body."""

from __future__ import annotations

import asyncio
import json

import pytest

from app.api.errors import HTTP_STATUS, TooManyFiles, Unauthorized, _refused, http_status
from app.service.batcher import Overloaded
from app.service.errors import InvalidInput, NotFound, ServiceError, Unavailable
from models.imaging.errors import (
    CorruptImageError,
    ImageDecodeError,
    ImageTooLargeError,
    UnsupportedFormatError,
    UnsupportedTransferSyntaxError,
)


@pytest.mark.parametrize(
    ("exc", "status", "headers"),
    [
        (UnsupportedFormatError("x"), 415, None),
        (UnsupportedTransferSyntaxError("x"), 415, None),
        (CorruptImageError("x"), 422, None),
        (ImageTooLargeError("x"), 413, None),
        (ImageDecodeError("x"), 422, None),
        (InvalidInput("x"), 422, None),
        (NotFound("x"), 404, None),
        (TooManyFiles("x"), 413, None),
        (Unauthorized("x"), 401, {"WWW-Authenticate": "X-API-Key"}),
        (Unavailable("x"), 503, {"Retry-After": "1"}),
        (Overloaded("x"), 503, {"Retry-After": "1"}),
    ],
)
def test_each_refusal_has_its_status(exc: Exception, status: int, headers: object) -> None:
    assert http_status(exc) == (status, headers)


def test_domain_exceptions_carry_no_status() -> None:
    for cls in HTTP_STATUS:
        assert not hasattr(cls, "status_code") and not hasattr(cls, "headers"), cls
    assert issubclass(Overloaded, ServiceError)


def test_body_is_the_first_line_of_the_message() -> None:
    response = asyncio.run(_refused(None, CorruptImageError("PNG image is corrupt\nsecond")))  # type: ignore[arg-type]
    assert response.status_code == 422
    assert json.loads(bytes(response.body)) == {"detail": "PNG image is corrupt"}
