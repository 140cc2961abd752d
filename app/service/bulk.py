"""Bulk ingestion through the service's own ingest path: ``cbmir index`` and demo seeding.

Folders are read in batches of 64 and each batch goes through
:meth:`app.service.retriever.Retriever.ingest_sync` — the very steps ``POST /index`` takes — so a
bulk-loaded image is stored exactly as an uploaded one would be.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from app.config import Settings
from app.service.errors import ServiceError
from app.service.retriever import Retriever
from app.service.uploads import Upload
from models.imaging.errors import ImageDecodeError
from models.imaging.formats import is_image_file

log = logging.getLogger(__name__)

DEMO_DIR = Path(__file__).resolve().parents[1] / "demo"
BATCH = 64

Entry = tuple[Path, str | None]  # file, given label (None: predicted)


def collect(folder: Path, classes: Sequence[str]) -> list[Entry]:
    """Class sub-folders give their name as label (when it is a model class); loose files
    and sub-folders that are no model class get the predicted label."""
    entries: list[Entry] = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            label = path.name if path.name in classes else None
            if label is None:
                log.warning("folder %r is not a model class (%s): labels will be predicted",
                            path.name, ", ".join(classes))
            entries += [(p, label) for p in sorted(path.rglob("*")) if is_image_file(p)]
        elif is_image_file(path):
            entries.append((path, None))
    return entries


def _read(entries: Sequence[Entry]) -> tuple[list[Upload], int]:
    uploads, unreadable = [], 0
    for path, label in entries:
        try:
            uploads.append(Upload(path.read_bytes(), path.name, label))
        except OSError as e:
            log.warning("skipped %s: %s", path, e.strerror)
            unreadable += 1
    return uploads, unreadable


def ingest_entries(
    retriever: Retriever,
    entries: Sequence[Entry],
    *,
    progress: bool = False,
    cancel: threading.Event | None = None,
) -> dict[str, int]:
    counts = {"added": 0, "duplicates": 0, "skipped": 0}
    with tqdm(total=len(entries), disable=not progress, unit="img", desc="indexing") as bar:
        for start in range(0, len(entries), BATCH):
            if cancel is not None and cancel.is_set():
                break
            uploads, unreadable = _read(entries[start : start + BATCH])
            counts["skipped"] += unreadable
            try:
                done = retriever.ingest_sync(uploads)
            except (ImageDecodeError, ServiceError):
                # One bad file fails a request as a whole; here, isolate it and go on.
                done = []
                for up in uploads:
                    try:
                        done += retriever.ingest_sync([up])
                    except (ImageDecodeError, ServiceError) as e:
                        log.warning("skipped %s", e)
                        counts["skipped"] += 1
            for item in done:
                counts["duplicates" if item.duplicate else "added"] += 1
            bar.update(len(uploads) + unreadable)
    return counts


def seed_demo(
    retriever: Retriever, demo_dir: Path = DEMO_DIR, cancel: threading.Event | None = None
) -> dict[str, int] | None:
    """Fill an empty store with the bundled demo gallery (labels from the folder names)."""
    if retriever.store.count() or not demo_dir.is_dir():
        return None
    counts = ingest_entries(retriever, collect(demo_dir, retriever.classes), cancel=cancel)
    log.info("seeded the demo gallery from %s: %s", demo_dir, counts)
    return counts


def index_folder(folder: Path, settings: Settings, progress: bool = True) -> dict[str, int]:
    """Bulk-add ``folder`` to ``settings.data_dir``, in this process (holds the data lock)."""
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a directory")
    retriever = Retriever.open(settings)
    try:
        entries = collect(folder, retriever.classes)
        if not entries:
            raise ValueError(f"no image files in {folder}")
        counts = ingest_entries(retriever, entries, progress=progress)
        return {**counts, "index_size": len(retriever.index)}
    finally:
        retriever.close()
