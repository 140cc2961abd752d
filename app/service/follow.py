"""``cbmir follow --orthanc URL``: ingest each series an Orthanc makes stable.

Orthanc numbers every change (``GET /changes?since=N``). The follower reads them in
order; for each ``StableSeries`` (no new instance for Orthanc's ``StableAge`` seconds) it
lists the series' instances, fetches those the sink does not hold (2–4 at a time) from
``/instances/{id}/file``, and ingests them through the ``POST /index`` code. Its cursor
(the last change handled) and the studies it ingested are kept in a JSON state file,
replaced atomically, and the cursor moves past a series only once the sink has
acknowledged all of its images: killed at any point, a restart resumes at that series,
and what was already stored comes back as duplicates (by SOP Instance UID), so nothing is
stored twice. An instance that cannot be fetched or decoded is logged and counted, and
the cursor moves on; when Orthanc or the destination is away, the follower waits and
tries the same change again (``--once`` stops with the error instead).

Orthanc reports no deletions in ``/changes``, so every ``reconcile_s`` the follower asks
Orthanc (``POST /tools/lookup``) for each study it ingested, and deletes from the sink
the ones Orthanc no longer has. The follower is its own process (not a thread of ``cbmir
serve``): it can run beside any service (``--to``), and restarting it never restarts
search.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from app.service.atomic import write_atomically
from app.service.dicomweb import ArchiveError
from app.service.sinks import OutcomeCounts, Sink, SinkError
from app.service.uploads import Upload

log = logging.getLogger(__name__)

CHANGES_PAGE = 100
BATCH = 16
RETRY_S = 5.0  # after the archive or the destination failed


@dataclass
class FollowState:
    url: str
    last: int = 0  # the last change handled
    studies: dict[str, str] = field(default_factory=dict)  # Study UID -> Orthanc study id

    @classmethod
    def load(cls, path: Path, url: str) -> FollowState:
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return cls(url)
        except (OSError, ValueError) as e:
            raise ValueError(f"follow state {path} is unreadable: {type(e).__name__}") from None
        if not isinstance(raw, dict) or raw.get("url") != url:
            raise ValueError(f"follow state {path} belongs to another archive "
                             f"({str(raw.get('url') if isinstance(raw, dict) else '?')[:100]})")
        return cls(url, int(raw.get("last", 0)), dict(raw.get("studies", {})))

    def save(self, path: Path) -> None:
        """Atomically: a temporary file, fsync'd, renamed over the old state."""
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps(
            {"url": self.url, "last": self.last, "studies": self.studies}).encode())


def probe_orthanc(url: str) -> None:
    """Raise a one-line :class:`ArchiveError` unless ``url`` answers like an Orthanc."""
    url = url.rstrip("/")
    try:
        r = httpx.get(f"{url}/system", timeout=10)
        ok = r.status_code == 200 and isinstance(r.json(), dict)
    except httpx.HTTPError as e:
        raise ArchiveError(f"Orthanc {url} unreachable: {type(e).__name__}") from None
    except ValueError:
        ok = False
    if not ok:
        raise ArchiveError(f"{url} does not answer like an Orthanc (GET /system)")


@dataclass
class FollowCounts(OutcomeCounts):
    series: int = 0
    deleted_studies: int = 0


class OrthancFollower:
    def __init__(self, orthanc_url: str, sink: Sink, state_path: Path, *,
                 dicomweb_root: str = "/dicom-web", reconcile_s: float = 300.0,
                 poll_s: float = 1.0, concurrency: int = 3) -> None:
        if not orthanc_url.startswith(("http://", "https://")):
            raise ValueError(f"--orthanc must be an http(s) URL, not {orthanc_url[:200]!r}")
        self.url = orthanc_url.rstrip("/")
        self.sink = sink
        self.state_path = state_path
        self.wado_base = self.url + "/" + dicomweb_root.strip("/")
        self.reconcile_s = reconcile_s
        self.poll_s = poll_s
        self.concurrency = concurrency
        self.http = httpx.Client(base_url=self.url, timeout=60)
        self.state = FollowState.load(state_path, self.url)
        self.counts = FollowCounts()
        self._last_reconcile = time.monotonic()

    def close(self) -> None:
        """The HTTP client and the sink (a local sink holds the data dir)."""
        self.http.close()
        self.sink.close()

    # -- Orthanc's REST API -----------------------------------------------------------

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise ArchiveError(f"Orthanc {self.url} unreachable: {type(e).__name__}") from None
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise ArchiveError(f"{method} {self.url}{path}: HTTP {r.status_code}")
        if r.headers.get("content-type", "").startswith("application/json"):
            try:
                return r.json()
            except ValueError:
                raise ArchiveError(f"{method} {self.url}{path}: not JSON") from None
        return r.content

    # -- one series ---------------------------------------------------------------------

    def _series(self, series_id: str) -> None:
        info = self._call("GET", f"/series/{quote(series_id)}")
        if info is None:
            log.info("series %s is gone from Orthanc; skipped", series_id)
            return
        study = self._call("GET", f"/studies/{quote(str(info.get('ParentStudy', '')))}") or {}
        series_uid = str(info.get("MainDicomTags", {}).get("SeriesInstanceUID", ""))
        study_uid = str(study.get("MainDicomTags", {}).get("StudyInstanceUID", ""))
        instances = self._call("GET", f"/series/{quote(series_id)}/instances") or []
        known = self.sink.known_sops(series_uid) if series_uid else set()
        todo = [(str(i["ID"]), str(i.get("MainDicomTags", {}).get("SOPInstanceUID", "")))
                for i in instances if isinstance(i, dict) and "ID" in i]
        todo = [(iid, sop) for iid, sop in todo if sop not in known]

        def fetch(item: tuple[str, str]) -> Upload | None:
            iid, sop = item
            try:
                data = self._call("GET", f"/instances/{quote(iid)}/file")
            except ArchiveError as e:
                log.warning("could not fetch instance %s: %s", iid, e)
                return None
            if not isinstance(data, bytes | bytearray):
                return None
            wado = (f"{self.wado_base}/studies/{study_uid}/series/{series_uid}/instances/{sop}"
                    if study_uid and series_uid and sop else None)
            return Upload(bytes(data), f"{sop or iid}.dcm", wado_url=wado)

        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="orthanc") as pool:
            for start in range(0, len(todo), BATCH):
                got = list(pool.map(fetch, todo[start:start + BATCH]))
                uploads = [u for u in got if u is not None]
                self.counts.failed += len(got) - len(uploads)
                for outcome in self.sink.ingest(uploads) if uploads else []:
                    self.counts.count(outcome)
        self.counts.series += 1
        if study_uid:
            self.state.studies[study_uid] = str(info.get("ParentStudy", ""))
        log.info("series %s: %d instance(s), %d new", series_uid or series_id, len(instances),
                 len(todo))

    # -- the loop -----------------------------------------------------------------------

    def step(self) -> bool:
        """One page of changes; True when Orthanc has none left after it."""
        page = self._call("GET", "/changes", params={"since": self.state.last,
                                                     "limit": CHANGES_PAGE})
        if not isinstance(page, dict) or not isinstance(page.get("Changes"), list):
            raise ArchiveError(f"malformed /changes answer from {self.url}")
        for change in page["Changes"]:
            seq = int(change.get("Seq", self.state.last))
            if change.get("ChangeType") == "StableSeries":
                self._series(str(change.get("ID", "")))
                self.state.last = seq
                self.state.save(self.state_path)  # acknowledged: move past it
            else:
                self.state.last = seq
        before = self.state.last
        # Every change of the page is handled: "Last" is the newest of them.
        self.state.last = max(self.state.last, int(page.get("Last", self.state.last)))
        if page["Changes"] or self.state.last != before:
            self.state.save(self.state_path)
        return bool(page.get("Done", True))

    def reconcile(self) -> int:
        """Delete from the sink the studies Orthanc no longer has."""
        gone = 0
        for study_uid in list(self.state.studies):
            found = self._call("POST", "/tools/lookup", content=study_uid) or []
            if not any(isinstance(f, dict) and f.get("Type") == "Study" for f in found):
                n = self.sink.delete_study(study_uid)
                log.info("study %s is gone from Orthanc: %d image(s) deleted", study_uid, n)
                del self.state.studies[study_uid]
                self.state.save(self.state_path)
                gone += 1
        self.counts.deleted_studies += gone
        self._last_reconcile = time.monotonic()
        return gone

    def run(self, stop: threading.Event | None = None, once: bool = False) -> FollowCounts:
        """Until ``stop`` is set (or, with ``once``, until no change is left)."""
        stop = stop or threading.Event()
        while not stop.is_set():
            try:
                done = self.step()
                if once and done:
                    self.reconcile()
                    break
                if time.monotonic() - self._last_reconcile >= self.reconcile_s:
                    self.reconcile()
            except (ArchiveError, SinkError) as e:
                if once:
                    raise
                # Orthanc or the service away for a while: the cursor has not moved past
                # anything unacknowledged, so waiting and trying again loses nothing.
                log.warning("%s; retrying in %.0fs", e, RETRY_S)
                stop.wait(RETRY_S)
                continue
            if done:
                stop.wait(self.poll_s)
        return self.counts
