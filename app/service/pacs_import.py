"""``cbmir index --dicomweb``: a paged QIDO-RS walk, then WADO-RS retrieves, into a sink.

Studies (the ones named, or every study, by ``ModalitiesInStudy`` when modalities are
given) → their series (of those modalities) → their instances. Instances the sink already
holds (by SOP Instance UID, asked once per series) are not fetched again, so a re-run
costs the walk only. The rest are retrieved as ``application/dicom`` by ``concurrency``
threads (2–4 requests in flight is what an archive tolerates beside its own traffic)
and ingested in batches through the same code as ``POST /index``, each with its WADO-RS
URL. An instance that cannot be fetched or decoded is logged and counted, and the run
goes on; only an archive that cannot be listed at all, or a sink that fails, ends it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from tqdm import tqdm

from app.service.dicomweb import ArchiveError, DicomWebClient, InstanceRef
from app.service.sinks import Outcome, OutcomeCounts, Sink
from app.service.uploads import Upload

log = logging.getLogger(__name__)

BATCH = 16  # instances per ingest call (one forward pass, one commit)


@dataclass
class ImportCounts(OutcomeCounts):
    """``duplicates``: fetched, and the same SOP instance was stored meanwhile; ``failed``:
    the fetch or the decode failed (logged)."""

    instances: int = 0  # found by the walk
    already_stored: int = 0  # skipped without a fetch
    listing_errors: int = 0  # a study's or series' listing failed (logged)
    seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        out = {k: v for k, v in vars(self).items() if k != "extra"}
        fetched = self.added + self.duplicates + self.failed
        out["images_per_s"] = round(fetched / self.seconds, 2) if self.seconds else 0.0
        out["seconds"] = round(self.seconds, 2)
        return {**out, **self.extra}


def walk(client: DicomWebClient, studies: Sequence[str], modalities: Sequence[str],
         counts: ImportCounts) -> Iterator[tuple[str, list[InstanceRef]]]:
    """(series UID, its instances) for every series to import. The study list failing is
    fatal (raised); a study's or series' listing failing is logged, counted, skipped."""
    mods = [m.upper() for m in modalities]
    study_uids = list(studies) or list(client.studies(mods or None))
    for study in study_uids:
        try:
            series = list(client.series(study, mods or None))
        except ArchiveError as e:
            log.warning("skipped study %s: %s", study, e)
            counts.listing_errors += 1
            continue
        for series_uid, _modality in series:
            try:
                refs = list(client.instances(study, series_uid))
            except ArchiveError as e:
                log.warning("skipped series %s: %s", series_uid, e)
                counts.listing_errors += 1
                continue
            yield series_uid, refs


def _fetch(client: DicomWebClient, ref: InstanceRef) -> Upload | None:
    try:
        data = client.retrieve(ref)
    except ArchiveError as e:
        log.warning("could not retrieve instance %s: %s", ref.sop_uid, e)
        return None
    return Upload(data, f"{ref.sop_uid}.dcm", wado_url=client.base + ref.path())


def import_dicomweb(
    client: DicomWebClient, sink: Sink, *, studies: Sequence[str] = (),
    modalities: Sequence[str] = (), concurrency: int = 3, progress: bool = True,
) -> ImportCounts:
    counts = ImportCounts()
    t0 = time.perf_counter()
    todo: list[InstanceRef] = []
    for series_uid, refs in walk(client, studies, modalities, counts):
        counts.instances += len(refs)
        known = sink.known_sops(series_uid)
        counts.already_stored += sum(r.sop_uid in known for r in refs)
        todo += [r for r in refs if r.sop_uid not in known]
    log.info("%d instance(s) found, %d already stored, %d to fetch", counts.instances,
             counts.already_stored, len(todo))
    batch: list[Upload] = []
    # Ingestion runs beside the fetches (one batch at a time, one more waiting): the
    # archive and the model work at once.
    ingesting: list[Future[list[Outcome]]] = []

    def settle(keep: int) -> None:
        while len(ingesting) > keep:
            for outcome in ingesting.pop(0).result():
                counts.count(outcome)

    def flush(sink_pool: ThreadPoolExecutor) -> None:
        if batch:
            ingesting.append(sink_pool.submit(sink.ingest, list(batch)))
            batch.clear()
            settle(1)

    with ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="wado") as pool, \
            ThreadPoolExecutor(1, thread_name_prefix="ingest") as sink_pool, tqdm(
                total=len(todo), disable=not progress, unit="img", desc="importing") as bar:
        window = 2 * BATCH  # fetched ahead of ingestion, no more
        pending: list[Future[Upload | None]] = []
        for ref in todo:
            pending.append(pool.submit(_fetch, client, ref))
            if len(pending) >= window:
                _take(pending.pop(0), batch, counts, bar)
                if len(batch) >= BATCH:
                    flush(sink_pool)
        for fut in pending:
            _take(fut, batch, counts, bar)
            if len(batch) >= BATCH:
                flush(sink_pool)
        flush(sink_pool)
        settle(0)
    counts.seconds = time.perf_counter() - t0
    return counts


def _take(fut: Future[Upload | None], batch: list[Upload], counts: ImportCounts,
          bar: tqdm) -> None:
    up = fut.result()
    bar.update(1)
    if up is None:
        counts.failed += 1
    else:
        batch.append(up)
