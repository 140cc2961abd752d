"""Errors of the service whose message is safe to show the client."""

from __future__ import annotations


class ApiError(Exception):
    """An error whose message is safe to show the client."""

    status_code = 400
    headers: dict[str, str] | None = None

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidInput(ApiError):
    status_code = 422


class NotFound(ApiError):
    status_code = 404


class PayloadTooLarge(ApiError):
    status_code = 413


class Unauthorized(ApiError):
    status_code = 401
    headers = {"WWW-Authenticate": "X-API-Key"}


class Unavailable(ApiError):
    """Overloaded or still starting: the client should retry shortly."""

    status_code = 503
    headers = {"Retry-After": "1"}
