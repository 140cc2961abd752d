"""Dependencies: the loaded retriever, settings, metrics and API-key checks."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from app.api.errors import Unauthorized
from app.config import Settings
from app.service.errors import Unavailable
from app.service.metrics import Metrics
from app.service.retriever import Retriever

# Every dependency here is ``async def`` on purpose: a plain ``def`` dependency runs in
# the thread pool, a round trip to another thread per dependency per request (three of
# them on /search before this), for work that is a few attribute reads.


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


async def get_retriever(request: Request) -> Retriever:
    """The loaded retriever, or 503 + ``Retry-After`` while the model and index load."""
    loader = request.app.state.loader  # app.main.Loader
    retriever: Retriever | None = loader.retriever
    if retriever is None:
        if loader.error:
            raise Unavailable(f"service failed to start: {loader.error}")
        raise Unavailable("service is starting: model and index are loading")
    return retriever


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
RetrieverDep = Annotated[Retriever, Depends(get_retriever)]

# auto_error=False: a missing key is our 401 (JSON detail), not FastAPI's 403.
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)
ApiKeyDep = Annotated[str | None, Security(_api_key_header)]


def _check_key(settings: Settings, given: str | None) -> None:
    if settings.api_key is None:
        return
    expected = settings.api_key.get_secret_value().encode()
    # compare_digest: the comparison time does not reveal how much of the key matched.
    if given is None or not hmac.compare_digest(given.encode(), expected):
        raise Unauthorized("missing or invalid X-API-Key header")


async def require_write_key(settings: SettingsDep, api_key: ApiKeyDep) -> None:
    """``POST /index`` and ``DELETE`` need the key whenever ``CBMIR_API_KEY`` is set."""
    _check_key(settings, api_key)


async def require_read_key(settings: SettingsDep, api_key: ApiKeyDep) -> None:
    """Reads need the key only with ``CBMIR_API_KEY_FOR_READS=true``."""
    if settings.api_key_for_reads:
        _check_key(settings, api_key)
