"""Where the archive commands put images: this process's data dir, or a running service.

Both go through the same ingest code as ``POST /index``: :class:`LocalSink` calls
:meth:`app.service.retriever.Retriever.ingest_sync` on ``CBMIR_DATA_DIR`` (the service
stopped: the data dir's lock is held), :class:`RemoteSink` posts to a service's
``/index`` with the key from ``CBMIR_API_KEY``. A batch that fails as a whole is retried
file by file, so one bad instance costs only itself; each file ends ``added``,
``duplicate`` or ``failed``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Literal, Protocol

import httpx

from app.service.errors import ServiceError
from app.service.retriever import Retriever
from app.service.store import ItemFilter
from app.service.uploads import Upload
from models.imaging.errors import ImageDecodeError

log = logging.getLogger(__name__)

Outcome = Literal["added", "duplicate", "failed"]


@dataclass
class OutcomeCounts:
    """What became of the instances a run handed to its sink."""

    added: int = 0
    duplicates: int = 0
    failed: int = 0

    def count(self, outcome: Outcome) -> None:
        if outcome == "added":
            self.added += 1
        elif outcome == "duplicate":
            self.duplicates += 1
        else:
            self.failed += 1



class SinkError(Exception):
    """The destination itself failed (service unreachable, key refused): the run stops."""


class Sink(Protocol):
    def known_sops(self, series_uid: str) -> set[str]: ...
    def ingest(self, uploads: list[Upload]) -> list[Outcome]: ...
    def delete_study(self, study_uid: str) -> int: ...
    def close(self) -> None: ...


def _name(up: Upload) -> str:
    return up.filename or "instance"


@dataclass
class LocalSink:
    """Into ``CBMIR_DATA_DIR`` directly, through this process's own retriever."""

    retriever: Retriever

    def known_sops(self, series_uid: str) -> set[str]:
        return self.retriever.store.sops_of_series(series_uid)

    def _one(self, up: Upload) -> Outcome:
        try:
            return "duplicate" if self.retriever.ingest_sync([up])[0].duplicate else "added"
        except (ImageDecodeError, ServiceError) as e:
            log.warning("skipped %s: %s", _name(up), str(e).splitlines()[0])
            return "failed"

    def ingest(self, uploads: list[Upload]) -> list[Outcome]:
        try:
            done = self.retriever.ingest_sync(uploads)
        except (ImageDecodeError, ServiceError):
            # One bad file fails a request as a whole; here, isolate it and go on.
            return [self._one(up) for up in uploads]
        return ["duplicate" if it.duplicate else "added" for it in done]

    def delete_study(self, study_uid: str) -> int:
        return self.retriever.delete_where(ItemFilter(study_uid=study_uid))

    def close(self) -> None:
        self.retriever.close()


class RemoteSink:
    """To a running service over its API (``POST /index``, ``GET``/``DELETE /images``)."""

    RETRIES = 5  # on 503 (the service is busy or still starting)

    def __init__(self, url: str, api_key: str | None, timeout: float = 120.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise SinkError(f"--to must be an http(s) URL, not {url[:200]!r}")
        headers = {"X-API-Key": api_key} if api_key else {}
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def _request(self, method: str, path: str, **kw: object) -> httpx.Response:
        for attempt in range(self.RETRIES):
            try:
                r = self.http.request(method, path, **kw)  # type: ignore[arg-type]
            except httpx.HTTPError as e:
                raise SinkError(f"service {self.url} unreachable: {type(e).__name__}") from None
            if r.status_code == 401:
                raise SinkError(f"service {self.url} refused the key (set CBMIR_API_KEY)")
            if r.status_code != 503 or attempt == self.RETRIES - 1:
                return r
            time.sleep(min(float(r.headers.get("retry-after", 1)), 5.0) * (attempt + 1))
        raise AssertionError("unreachable")

    @staticmethod
    def _detail(r: httpx.Response) -> str:
        try:
            return str(r.json().get("detail", ""))[:300]
        except ValueError:
            return f"HTTP {r.status_code}"

    def known_sops(self, series_uid: str) -> set[str]:
        sops: set[str] = set()
        cursor: str | None = None
        while True:
            params = {"series_uid": series_uid, "limit": 500, **({"cursor": cursor} if cursor
                                                                  else {})}
            r = self._request("GET", "/images", params=params)
            if r.status_code != 200:
                raise SinkError(f"GET {self.url}/images: HTTP {r.status_code} "
                                f"{self._detail(r)}")
            body = r.json()
            sops |= {it["dicom"]["sop_uid"] for it in body["items"] if it.get("dicom")}
            cursor = body.get("next_cursor")
            if not cursor:
                return sops

    def _post(self, uploads: list[Upload]) -> httpx.Response:
        files = [("files", (_name(up), up.data, "application/dicom")) for up in uploads]
        data = {"wado_url": [up.wado_url or "" for up in uploads]}
        return self._request("POST", "/index", files=files, data=data)

    def ingest(self, uploads: list[Upload]) -> list[Outcome]:
        r = self._post(uploads)
        if r.status_code == 200:
            return ["duplicate" if it["duplicate"] else "added" for it in r.json()["items"]]
        if r.status_code == 503:
            raise SinkError(f"service {self.url} unavailable: {self._detail(r)}")
        if len(uploads) > 1:  # one bad file fails the request: isolate it
            return [out for up in uploads for out in self.ingest([up])]
        log.warning("skipped %s: HTTP %d %s", _name(uploads[0]), r.status_code, self._detail(r))
        return ["failed"]

    def delete_study(self, study_uid: str) -> int:
        r = self._request("DELETE", "/images", params={"study_uid": study_uid})
        if r.status_code != 200:
            raise SinkError(f"DELETE {self.url}/images: HTTP {r.status_code} {self._detail(r)}")
        return int(r.json()["deleted"])

    def close(self) -> None:
        self.http.close()
