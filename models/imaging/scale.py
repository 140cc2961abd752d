"""Early downscaling: how far to reduce an image that is larger than needed, and the cost
of decoding it, known from the header before any pixel is decoded.

Images above a pixel cap (the service sizes it from the model's input: 32x its side, so
2048 x 2048 for a 64 px model) are reduced on read by the smallest integer factor that
brings them under the cap: JPEG in the DCT itself (Pillow's ``draft``, 1/2 to 1/8), then a
box filter; DICOM frames by block means; PNG, TIFF and BMP after their (unavoidable) full
decode. Images at or under the cap decode exactly as without one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from models.imaging.formats import DecodedImage

# Bytes per pixel for Pillow's storage of each mode (RGB and friends take four).
_PIL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2,
              "LA": 4, "La": 4, "PA": 4, "RGB": 4, "RGBA": 4, "RGBa": 4, "RGBX": 4,
              "CMYK": 4, "YCbCr": 4, "LAB": 4, "HSV": 4, "I": 4, "F": 4}
# The 8-bit conversion of what is kept (at most the cap): a copy, float32 values,
# their scaled copy and the rounding (raster._scale_to_uint8; DICOM's float pipeline
# is of the same order, per sample).
_CONVERT_BYTES = 16


def reduction(width: int, height: int, cap: int | None) -> int:
    """Smallest integer k with ceil(w/k) * ceil(h/k) <= cap (1: no reduction)."""
    if not cap or width * height <= cap:
        return 1
    k = max(1, math.floor(math.sqrt(width * height / cap)))
    while math.ceil(width / k) * math.ceil(height / k) > cap:
        k += 1
    return k


def reduced_size(width: int, height: int, k: int) -> tuple[int, int]:
    return math.ceil(width / k), math.ceil(height / k)


def pil_bytes(mode: str) -> int:
    return _PIL_BYTES.get(mode, 4)


def footprint(read_pixels: int, bytes_per_pixel: int, kept_pixels: int, samples: int = 1,
              extra: int = 0) -> int:
    """Peak bytes of a decode: the raster as read, plus the conversion of what is kept."""
    return read_pixels * bytes_per_pixel + kept_pixels * samples * _CONVERT_BYTES + extra


@dataclass(frozen=True)
class PendingDecode:
    """An image whose header has been read: its cost is known, its pixels not decoded yet.

    ``footprint`` is an upper estimate of the bytes the decode holds at its peak (beside
    the encoded bytes themselves), so a caller can bound concurrent decodes by memory.
    """

    format: str
    width: int
    height: int
    reduction: int  # 1: decoded at full size
    footprint: int
    _decode: Callable[[], DecodedImage]

    def decode(self) -> DecodedImage:
        return self._decode()
