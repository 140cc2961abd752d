"""One stored image by id: its row, its original bytes, a PNG of it, its relabelling and
its deletion."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.service.backend import ItemStore, ServiceIndex, Snapshots
from app.service.errors import ArchiveFailed, InvalidInput, NotFound
from app.service.links import Links
from app.service.store import Item, ItemFilter
from models.imaging.decode import decode_image
from models.imaging.render import render_png

log = logging.getLogger(__name__)


@dataclass
class Items:
    store: ItemStore
    index: ServiceIndex
    snapshotter: Snapshots
    write_lock: AbstractContextManager[Any]
    links: Links = Links()
    # WADO-RS URL -> DICOM bytes, when CBMIR_DICOMWEB_URL names an archive; raises
    # app.service.dicomweb.ArchiveError.
    archive: Callable[[str], bytes] | None = None

    def get(self, item_id: int) -> Item:
        item = self.store.get(item_id)
        if item is None:
            raise NotFound(f"no image with id {item_id}")
        return item

    def original(self, item_id: int) -> tuple[bytes, str]:
        """The stored bytes (as they came, or de-identified); under
        ``CBMIR_STORE_ORIGINALS=none`` the archive's copy, when there is one."""
        item = self.get(item_id)
        if item.stored_as == "rendering":
            return self._from_archive(item)
        data = self.store.read_original(item)
        if data is None:
            raise NotFound(f"the original of image {item_id} is missing")
        return data, item.content_type

    def _from_archive(self, item: Item) -> tuple[bytes, str]:
        from app.service.dicomweb import ArchiveError

        url = self.links.wado_url(item.dicom, item.wado_url)
        if url is None or self.archive is None:
            raise NotFound(f"the original of image {item.id} was not kept "
                           "(CBMIR_STORE_ORIGINALS=none) and no archive holds it")
        try:
            return self.archive(url), "application/dicom"
        except ArchiveError as e:
            raise ArchiveFailed(f"the archive could not give the original: {e}") from None

    def stored(self, item_id: int) -> bytes:
        """The stored file, whatever it holds (a rendering under ``none``)."""
        item = self.get(item_id)
        data = self.store.read_original(item)
        if data is None:
            raise NotFound(f"the original of image {item_id} is missing")
        return data

    def png(self, item_id: int) -> bytes:
        """Any stored format, decoded as the model saw it, as PNG."""
        return render_png(decode_image(self.stored(item_id)).image)

    def delete(self, item_id: int) -> None:
        """Row deleted (committed) → removed from the index → original unlinked."""
        with self.write_lock:
            item = self.store.delete(item_id)
            if item is None:
                raise NotFound(f"no image with id {item_id}")
            self.index.remove([item_id])
            self.store.unlink_original(item.sha256)
        self.snapshotter.note_writes(1)
        log.info("deleted image %d", item_id)

    def delete_where(self, filt: ItemFilter) -> list[int]:
        """A study or a series: rows deleted in one commit → the index → the originals."""
        if filt.study_uid is None and filt.series_uid is None:
            raise InvalidInput("name a study_uid or a series_uid to delete")
        with self.write_lock:
            items = self.store.delete_where(filt)
            ids = [it.id for it in items]
            if ids:
                self.index.remove(ids)
            for it in items:
                self.store.unlink_original(it.sha256)
        self.snapshotter.note_writes(len(ids))
        log.info("deleted %d image(s) of %s", len(ids),
                 "series" if filt.series_uid is not None else "study")
        return ids

    def relabel(self, item_id: int, label: str, classes: list[str]) -> Item:
        """A curated label (source ``given``): SQLite first (committed, logged for the
        start-up reconciliation), then the vector moves to the label's sub-index."""
        if label not in classes:
            raise InvalidInput(f"unknown label {label!r}; known: {', '.join(classes)}")
        with self.write_lock:
            before = self.get(item_id)
            item = self.store.relabel(item_id, label)
            if item is None:
                raise NotFound(f"no image with id {item_id}")
            if before.label != label:
                ids, vectors, _ = next(self.store.vectors(self.index.dim, np.array([item_id])))
                self.index.remove(ids)
                self.index.add(ids, vectors, label)
        self.snapshotter.note_writes(1)
        log.info("relabelled image %d: %s -> %s (given)", item_id, before.label, label)
        return item
