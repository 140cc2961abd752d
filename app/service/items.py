"""One stored image by id: its row, its original bytes, a PNG of it, its relabelling and
its deletion."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np

from app.service.backend import ItemStore, ServiceIndex, Snapshots
from app.service.errors import InvalidInput, NotFound
from app.service.store import Item
from models.imaging.decode import decode_image
from models.imaging.render import render_png

log = logging.getLogger(__name__)


@dataclass
class Items:
    store: ItemStore
    index: ServiceIndex
    snapshotter: Snapshots
    write_lock: threading.Lock

    def get(self, item_id: int) -> Item:
        item = self.store.get(item_id)
        if item is None:
            raise NotFound(f"no image with id {item_id}")
        return item

    def original(self, item_id: int) -> tuple[bytes, str]:
        item = self.get(item_id)
        data = self.store.read_original(item)
        if data is None:
            raise NotFound(f"the original of image {item_id} is missing")
        return data, item.content_type

    def png(self, item_id: int) -> bytes:
        """Any stored format, decoded as the model saw it, as PNG."""
        data, _ = self.original(item_id)
        return render_png(decode_image(data).image)

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
