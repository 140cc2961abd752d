"""``cbmir listen``: a DICOM C-STORE SCP (pynetdicom) that spools, and a worker that ingests.

The C-STORE handler does one thing: it writes the received bytes (as they came, with a
file meta header) to the spool directory — a temporary file, fsync'd, renamed — and
answers Success. Decoding, the forward pass and the commit happen in a worker thread that
takes spooled files in batches of 16, ingests them through the ``POST /index`` code (a
sink), and deletes each file once the sink has acknowledged it; so a slow model never
holds an association, and files spooled before a crash are ingested at the next start.
A file that cannot be decoded is logged, counted and deleted (the sender keeps its
copy); a sink that fails (the service down) leaves the files for the next try.

It accepts the Storage SOP classes in the transfer syntaxes this service decodes
(:data:`SYNTAXES`), answers C-ECHO, and binds to loopback unless told otherwise.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any

from app.service.atomic import write_atomically
from app.service.links import instance_path
from app.service.sinks import OutcomeCounts, Sink, SinkError
from app.service.store import DicomFields
from app.service.uploads import Upload

log = logging.getLogger(__name__)

BATCH = 16
# What models.imaging decodes (uncompressed, deflated, RLE, JPEG incl. lossless and 12-bit,
# JPEG-LS, JPEG 2000, HTJ2K), in pynetdicom's order of preference.
SYNTAXES = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, SV1
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (12-bit)
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.5",  # RLE Lossless
)
SUCCESS, OUT_OF_RESOURCES = 0x0000, 0xA700


@dataclass
class ListenCounts(OutcomeCounts):
    received: int = 0


class Spool:
    """Received instances on disk until the sink has them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        for tmp in root.glob(".tmp-*"):  # a write a crash interrupted
            tmp.unlink(missing_ok=True)
        self._seq = count()

    def put(self, data: bytes) -> Path:
        path = self.root / f"{time.time_ns():020d}-{next(self._seq):06d}.dcm"
        write_atomically(path, data)
        return path

    def pending(self, limit: int) -> list[Path]:
        return sorted(self.root.glob("*.dcm"))[:limit]


def _wado_url(data: bytes, dicomweb_url: str | None) -> str | None:
    if not dicomweb_url:
        return None
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
        d = DicomFields(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                        str(ds.SOPInstanceUID))
    except Exception:  # no UIDs: no link (the decoder judges the file itself)
        return None
    return dicomweb_url.rstrip("/") + instance_path(d)


class StoreScp:
    def __init__(self, aet: str, host: str, port: int, spool: Spool, sink: Sink, *,
                 dicomweb_url: str | None = None, retry_s: float = 2.0) -> None:
        self.aet, self.host, self.port = aet, host, port
        self.spool, self.sink = spool, sink
        self.dicomweb_url = dicomweb_url
        self.retry_s = retry_s
        self.counts = ListenCounts()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._server: Any = None
        self._worker = threading.Thread(target=self._work, name="cbmir-ingest", daemon=True)

    # -- the SCP: spool and answer --------------------------------------------------------

    def _on_store(self, event: Any) -> int:
        t0 = time.monotonic()
        try:
            self.spool.put(bytes(event.encoded_dataset(include_meta=True)))
        except OSError as e:
            log.error("could not spool a received instance: %s", e.strerror)
            return OUT_OF_RESOURCES
        if (took := time.monotonic() - t0) > 1.0:  # the sender waits on this: say why
            log.warning("spooling one instance took %.1f s (a slow disk?)", took)
        self.counts.received += 1
        self._wake.set()
        return SUCCESS

    def _on_echo(self, event: Any) -> int:
        return SUCCESS

    def start(self) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        ae = AE(ae_title=self.aet)
        for cx in AllStoragePresentationContexts:
            if cx.abstract_syntax is not None:
                ae.add_supported_context(cx.abstract_syntax, list(SYNTAXES))
        ae.add_supported_context(Verification)
        ae.maximum_pdu_size = 0  # no limit
        handlers: list[Any] = [(evt.EVT_C_STORE, self._on_store),
                               (evt.EVT_C_ECHO, self._on_echo)]
        self._server = ae.start_server((self.host, self.port), block=False,
                                       evt_handlers=handlers)
        self._worker.start()
        self._wake.set()  # files spooled before a restart
        log.info("C-STORE SCP %s listening on %s:%d; accepts %s", self.aet, self.host,
                 self.port, ", ".join(SYNTAXES))

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
        self._stop.set()
        self._wake.set()
        if self._worker.is_alive():
            self._worker.join(60)

    def wait(self) -> None:
        self._stop.wait()

    # -- the worker: ingest, then delete ---------------------------------------------------

    def drain_once(self) -> int:
        """Ingest one batch of spooled files; how many were taken."""
        paths = self.spool.pending(BATCH)
        if not paths:
            return 0
        uploads = []
        for p in paths:
            data = p.read_bytes()
            uploads.append(Upload(data, p.name, wado_url=_wado_url(data, self.dicomweb_url)))
        outcomes = self.sink.ingest(uploads)
        for p, outcome in zip(paths, outcomes, strict=True):
            self.counts.count(outcome)
            p.unlink(missing_ok=True)
        return len(paths)

    def _work(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            while not self._stop.is_set():
                try:
                    if not self.drain_once():
                        break
                except SinkError as e:
                    log.warning("ingest deferred (%s); retrying in %.0fs", e, self.retry_s)
                    self._stop.wait(self.retry_s)
                except Exception:
                    log.exception("ingest of spooled files failed; retrying")
                    self._stop.wait(self.retry_s)
        # Stopping: one last drain of what is already spooled (never an error exit).
        try:
            while self.drain_once():
                pass
        except Exception as e:
            log.warning("left %d spooled file(s) for the next start: %s",
                        len(self.spool.pending(10**6)), type(e).__name__)
