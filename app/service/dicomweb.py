"""A small DICOMweb client (QIDO-RS search, WADO-RS retrieve) on httpx.

Only what cbmir needs: paged searches of studies, series and instances, and one instance
as ``application/dicom`` bytes. Every failure is an :class:`ArchiveError` whose message is
one line naming what failed (the URL, the status), never a traceback; an answer that is
not what QIDO-RS promises (not JSON, not a list, an entry without its UID) is one too.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

log = logging.getLogger(__name__)

PAGE = 100  # QIDO-RS entries per request (limit/offset paging)
DICOM_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
_UID = re.compile(r"^[0-9][0-9.]{0,63}$")

# QIDO-RS JSON (PS3.18 F.2) keys: tag numbers.
STUDY_UID, SERIES_UID, SOP_UID, MODALITY = "0020000D", "0020000E", "00080018", "00080060"


class ArchiveError(Exception):
    """The archive could not be reached or gave an answer that cannot be used."""


@dataclass(frozen=True)
class InstanceRef:
    study_uid: str
    series_uid: str
    sop_uid: str

    def path(self) -> str:
        return (f"/studies/{quote(self.study_uid)}/series/{quote(self.series_uid)}"
                f"/instances/{quote(self.sop_uid)}")


def tag_value(entry: Any, tag: str) -> str | None:
    """The first value of ``tag`` in one QIDO-RS JSON entry, or None."""
    if not isinstance(entry, dict):
        return None
    element = entry.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    if isinstance(values, list) and values and isinstance(values[0], str | int | float):
        return str(values[0])
    return None


def uid_of(entry: Any, tag: str, what: str) -> str:
    value = tag_value(entry, tag)
    if value is None or not _UID.match(value):
        raise ArchiveError(f"malformed QIDO-RS answer: a {what} without a valid UID")
    return value


def parse_multipart(body: bytes, content_type: str) -> list[bytes]:
    """The parts of a ``multipart/related`` body (RFC 2046), headers stripped."""
    match = re.search(r'boundary="?([^";]+)"?', content_type, re.IGNORECASE)
    if match is None:
        if "application/dicom" in content_type.lower():
            return [body]  # a single part, sent bare
        raise ArchiveError(f"WADO-RS answer is not multipart (Content-Type {content_type[:80]})")
    delimiter = b"--" + match[1].encode()
    parts: list[bytes] = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break  # the closing delimiter
        head, sep, payload = chunk.partition(b"\r\n\r\n")
        if not sep:
            continue
        parts.append(payload[:-2] if payload.endswith(b"\r\n") else payload)
    return parts


class DicomWebClient:
    """One archive's DICOMweb root, e.g. ``http://127.0.0.1:8042/dicom-web``."""

    def __init__(self, base_url: str, *, timeout: float = 30.0,
                 client: httpx.Client | None = None) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ArchiveError(f"not an http(s) URL: {base_url[:200]}")
        self.base = base_url.rstrip("/")
        self.http = client or httpx.Client(timeout=timeout, follow_redirects=False)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> DicomWebClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get(self, path: str, params: dict[str, Any] | None = None,
             accept: str = "application/dicom+json") -> httpx.Response:
        url = self.base + path
        try:
            r = self.http.get(url, params=params, headers={"Accept": accept})
        except httpx.HTTPError as e:
            raise ArchiveError(f"archive {self.base} unreachable: {type(e).__name__}"
                               f"{': ' + str(e).splitlines()[0] if str(e) else ''}") from None
        if r.status_code == 204:  # no match
            return r
        if r.status_code != 200:
            raise ArchiveError(f"GET {url}: HTTP {r.status_code}")
        return r

    def search(self, path: str, params: dict[str, Any] | None = None) -> Iterator[Any]:
        """Every entry of a QIDO-RS search, page by page (limit/offset)."""
        offset = 0
        while True:
            r = self._get(path, {**(params or {}), "limit": PAGE, "offset": offset})
            if r.status_code == 204 or not r.content.strip():
                return
            try:
                page = r.json()
            except ValueError:
                raise ArchiveError(f"malformed QIDO-RS answer from {self.base}{path}: "
                                   "not JSON") from None
            if not isinstance(page, list):
                raise ArchiveError(f"malformed QIDO-RS answer from {self.base}{path}: "
                                   "not a list")
            yield from page
            if len(page) < PAGE:
                return
            offset += len(page)

    def check(self) -> None:
        """Answers a QIDO-RS search at all (before anything is loaded for an import)."""
        r = self._get("/studies", {"limit": 1})
        if r.status_code == 200:
            try:
                ok = isinstance(r.json(), list)
            except ValueError:
                ok = False
            if not ok:
                raise ArchiveError(f"malformed QIDO-RS answer from {self.base}/studies: "
                                   "not a JSON list")

    def studies(self, modalities: list[str] | None = None) -> Iterator[str]:
        params = {"ModalitiesInStudy": ",".join(modalities)} if modalities else None
        for entry in self.search("/studies", params):
            yield uid_of(entry, STUDY_UID, "study")

    def series(self, study_uid: str, modalities: list[str] | None = None
               ) -> Iterator[tuple[str, str | None]]:
        """(Series Instance UID, Modality) of a study's series; filtered here, too, since
        not every archive filters series by a list of modalities."""
        wanted = {m.upper() for m in modalities or []}
        for entry in self.search(f"/studies/{quote(study_uid)}/series"):
            uid = uid_of(entry, SERIES_UID, "series")
            modality = tag_value(entry, MODALITY)
            if not wanted or (modality or "").upper() in wanted:
                yield uid, modality

    def instances(self, study_uid: str, series_uid: str) -> Iterator[InstanceRef]:
        path = f"/studies/{quote(study_uid)}/series/{quote(series_uid)}/instances"
        for entry in self.search(path):
            yield InstanceRef(study_uid, series_uid, uid_of(entry, SOP_UID, "instance"))

    def retrieve(self, ref: InstanceRef) -> bytes:
        """One instance as DICOM bytes (the archive's stored transfer syntax)."""
        return self.fetch(self.base + ref.path())

    def fetch(self, url: str) -> bytes:
        """A WADO-RS instance URL → its DICOM bytes (the first part)."""
        if not url.startswith(self.base):
            raise ArchiveError("WADO-RS URL outside this archive")
        r = self._get(url[len(self.base):], accept=DICOM_ACCEPT)
        parts = parse_multipart(r.content, r.headers.get("content-type", ""))
        if not parts or not parts[0]:
            raise ArchiveError(f"GET {url}: no DICOM part in the answer")
        return parts[0]
