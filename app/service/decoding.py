"""Decoding under a memory budget: what bounds the server's memory is configuration, not
the uploads.

Each decode reserves its footprint (known from the header: :class:`models.imaging.scale.
PendingDecode`) from ``CBMIR_DECODE_MEMORY_MB`` before any pixel is decoded, and waits
while the budget is taken by others; an image that could not be decoded within the whole
budget, even reduced on read, is refused (413). Images above the pixel cap are reduced on
read, so a legal mammogram costs ~150 MB instead of ~550 (bench/RESULTS.md, "Memory").
Without this, 16 concurrent 6000 x 6000 16-bit PNG searches took the server to 8.7 GiB.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from app.service.errors import Unavailable
from models.config import ModelConfig
from models.imaging.decode import open_image
from models.imaging.errors import ImageTooLargeError
from models.imaging.formats import DecodedImage

MB = 1024 * 1024
CAP_SIDES = 32  # the pixel cap, in model input sides per image side


def pixel_cap_for(cfg: ModelConfig) -> int:
    """Images are reduced on read above (32 x the model's input side)^2 pixels: 2048^2
    for 64 px. The model sees them squashed to its input size, a further 32x reduction
    by an antialiasing filter, so the embedding barely moves (bench/RESULTS.md: cosine
    >= 0.9999 with and without the cap on eight large images, same class), while
    ordinary CT, MR, ultrasound and photos stay untouched."""
    side = CAP_SIDES * cfg.image_size
    return side * side


class DecodeBusy(Unavailable):
    """The decode budget stayed taken by other requests for ``wait_s``."""


class DecodeGate:
    """A byte-weighted semaphore: decodes in progress hold at most ``budget`` bytes."""

    def __init__(self, budget: int, wait_s: float = 30.0) -> None:
        self.budget = budget
        self.wait_s = wait_s
        self.in_use = 0
        self.peak = 0
        self._cond = threading.Condition()

    @contextmanager
    def reserve(self, n: int) -> Iterator[None]:
        if n > self.budget:
            raise ImageTooLargeError(
                f"image is too large: decoding it needs about {n / MB:.0f} MB, over the "
                f"{self.budget / MB:.0f} MB decode budget (CBMIR_DECODE_MEMORY_MB)"
            )
        deadline = time.monotonic() + self.wait_s
        with self._cond:
            while self.in_use + n > self.budget:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DecodeBusy("server busy decoding other large images, retry shortly")
                self._cond.wait(left)
            self.in_use += n
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= n
                self._cond.notify_all()

    def usage(self) -> tuple[int, int]:
        return self.in_use, self.peak


class Decoder:
    """Bytes → decoded image, reduced above ``pixel_cap`` and within the gate's budget."""

    def __init__(self, gate: DecodeGate, pixel_cap: int) -> None:
        self.gate = gate
        self.pixel_cap = pixel_cap

    def decode(self, data: bytes, *, reduce: bool = True) -> DecodedImage:
        """``reduce=False``: at full size (still within the budget), for renderings."""
        pending = open_image(data, downscale_above=self.pixel_cap if reduce else None)
        with self.gate.reserve(pending.footprint):
            return pending.decode()
