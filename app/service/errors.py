"""Requests the service refuses on purpose, each with a message safe to show the client.

They carry no HTTP status: :mod:`app.api.errors` chooses it, in one table.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of the service's refusals; ``detail`` (= ``str(e)``) is one line for the client."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidInput(ServiceError):
    """A request whose content cannot be used (unknown label, empty file, bad metadata)."""


class NotFound(ServiceError):
    """No stored image with that id, or its original is missing."""


class Unavailable(ServiceError):
    """Overloaded, still starting or shutting down: the client should retry shortly."""


class StorageFull(ServiceError):
    """The data directory's disk (or quota) is full: nothing of the write was kept."""


class NotYetSearchable(Unavailable):
    """Stored durably, but adding it to the index failed twice: a retry of the same request
    finds it stored and puts it into the index."""


class ArchiveFailed(ServiceError):
    """The configured archive (CBMIR_DICOMWEB_URL) did not give what was asked of it."""
