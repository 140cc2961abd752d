"""Small PNGs of stored images for the web page's grids, rendered once and kept in memory.

An id's bytes never change (ids are never reused, and a relabel leaves the image alone),
so a thumbnail never goes stale and its entity tag can be derived from the stored sha256
alone: a client's ``If-None-Match`` is answered from the row, without rendering anything.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from app.service.items import Items
from models.imaging.decode import decode_image
from models.imaging.render import render_thumbnail

THUMBNAIL_SIDE = 256
"""Longest side in pixels: a grid card is about 170 px wide, twice that on a HiDPI screen."""
CACHE_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class Thumbnail:
    etag: str
    png: bytes = field(repr=False)


@dataclass
class Thumbnails:
    items: Items
    max_bytes: int = CACHE_BYTES
    _cache: OrderedDict[int, Thumbnail] = field(default_factory=OrderedDict, repr=False)
    _bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def etag(self, item_id: int) -> str:
        """The strong entity tag of an item's thumbnail (:class:`NotFound` if none)."""
        item = self.items.get(item_id)
        return f'"{item.sha256[:32]}-{THUMBNAIL_SIDE}"'

    def get(self, item_id: int) -> Thumbnail:
        etag = self.etag(item_id)  # the row first: a deleted id is never served from memory
        with self._lock:
            hit = self._cache.get(item_id)
            if hit is not None:
                self._cache.move_to_end(item_id)
                return hit
        # Rendered outside the lock: two requests for one new id may both render it.
        data = self.items.stored(item_id)
        thumb = Thumbnail(etag, render_thumbnail(decode_image(data).image, THUMBNAIL_SIDE))
        with self._lock:
            if item_id not in self._cache:
                self._cache[item_id] = thumb
                self._bytes += len(thumb.png)
            while self._bytes > self.max_bytes and self._cache:
                _, old = self._cache.popitem(last=False)
                self._bytes -= len(old.png)
        return thumb

    def forget(self, item_id: int) -> None:
        """Drop a deleted item's thumbnail (its row is gone, so it is never served again)."""
        with self._lock:
            old = self._cache.pop(item_id, None)
            if old is not None:
                self._bytes -= len(old.png)
